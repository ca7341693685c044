"""Open streams after their handshake: sockets written to directly, with no greenlet each.

``/stream`` is served by Flask like any other request until the store has been read. Its
response then takes the socket over (``views.OpeningStream``): it writes the response head,
``retry:`` and the replay itself and hands the socket to this process's ``Streams``. From
then on an event costs one non-blocking ``send`` per tab, made by the hub's listener as it
reads the event from Redis, and an idle stream costs a socket, two small objects and a read
watcher that notices the browser going away. No greenlet, request context or database
connection stays behind.

When the worker stops (a deploy, ``max_requests``) its streams are carried to the workers
that succeed it (``succession.py``): each socket, with its user, login, lease and what
it has seen, goes to a new worker, which subscribes, re-reads the store above what the
stream has seen and carries on; the browser's connection never closes. Streams that cannot
be carried (no successor within ``handoff_seconds``, a stream behind on its writes) are
closed with a jittered ``retry:`` instead, and their browsers reconnect.

A socket that cannot take a frame at once (its kernel buffer is full) keeps the rest in a
queue flushed when it becomes writable. A client that falls further behind than
``max_queued`` bytes more is disconnected: its browser reconnects with the ``Last-Event-ID``
of the last whole event it got and the store replays the rest, exactly once.
"""

from __future__ import annotations

import logging
import os
import random
import resource
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable

import gevent
import gevent.event
import gevent.pool

from flask_tidings import telemetry
from flask_tidings.caps import StreamCap
from flask_tidings.events import Event, user_key
from flask_tidings.fanout import PubSub, Subscription
from flask_tidings.fences import raw_socket
from flask_tidings.presence import Presence
from flask_tidings.succession import PACKET_FDS, Successors
from flask_tidings.tally import FailureTally

log = logging.getLogger(__name__)

# The kind of connection this module carries from a stopping worker (succession.py).
CARRIED = "tidings.streams"

KEEPALIVE = b": keepalive\n\n"
_READ, _WRITE = 1, 2  # libev/libuv event masks


def default_capacity() -> int:
    """Open streams a process can hold: its open-files limit, less a reserve for everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(1, soft - min(1024, soft // 4))


class Unseen:
    """Filters one connection's events so that no stored id is sent twice or below the cursor.

    Per key it remembers the newest id sent; the store keeps one row per key and ids only
    grow, so an event is new exactly when its id beats both the cursor and that memory.
    """

    __slots__ = ("floor", "sent")

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self.sent: dict[str, int] = {}

    def admit(self, event: Event) -> bool:
        """Whether ``event`` should be sent now (and remember it if so)."""
        if event.id is None:
            return True
        if event.id <= self.floor or event.id <= self.sent.get(event.key, 0):
            return False
        self.sent[event.key] = event.id
        return True

    def frames(self, events: Iterable[Event]) -> bytes:
        """The SSE frames of the events that are new, concatenated."""
        return b"".join(e.wire for e in events if self.admit(e))

    def state(self) -> dict:
        """What it remembers, as JSON (for a worker the stream is carried to)."""
        return {"floor": self.floor, "sent": dict(self.sent)}

    @classmethod
    def restore(cls, state: dict) -> Unseen:
        """The filter ``state()`` described; ValueError/TypeError if it is malformed."""
        unseen = cls(int(state["floor"]))
        unseen.sent = {str(k): int(v) for k, v in state["sent"].items()}
        return unseen


class LiveStream:
    """One open stream: a non-blocking socket, a read watcher and, while behind, a write queue.

    Its methods run in whichever greenlet delivers (or in the event loop's own callbacks),
    so none of them ever waits.
    """

    __slots__ = (
        "sub",
        "lease",
        "unseen",
        "last_write",
        "closed",
        "leaving",
        "_streams",
        "_sock",
        "_reader",
        "_writer",
        "_queue",
        "_queued",
    )

    def __init__(
        self, streams: Streams, sub: Subscription, sock: socket.socket, unseen: Unseen, lease: str | None
    ) -> None:
        self.sub = sub
        self.lease = lease
        self.unseen = unseen
        self.last_write = time.monotonic()
        self.closed = False
        self.leaving = False  # being carried to another worker: it writes from now on
        self._streams = streams
        self._sock = sock
        self._sock.setblocking(False)
        self._reader = streams.loop.io(sock.fileno(), _READ)
        self._reader.start(self._on_readable)
        self._writer = None
        self._queue: deque | None = None
        self._queued = 0

    # -- what the hub and the registry call ----------------------------------------

    def send_event(self, event: Event) -> None:
        """Write ``event`` unless this connection has already seen it."""
        if self.unseen.admit(event):
            self.write(event.wire)

    def send_events(self, events: Iterable[Event]) -> None:
        """Write the events this connection has not seen, in one send."""
        data = self.unseen.frames(events)
        if data:
            self.write(data)

    def reread(self) -> None:
        """Re-read the store (soon, from another greenlet) and send what is new."""
        self._streams.reread(self)

    def looking_changed(self) -> None:
        """A tab of this stream became visible, or stopped being (presence.py)."""
        self._streams.looking_changed(self)

    def write(self, data: bytes) -> None:
        """Send ``data`` now, or queue what the socket does not take yet."""
        if self.closed or self.leaving:
            return
        if self._queue is None:
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                return
            if sent < len(data):
                self._enqueue(memoryview(data)[sent:])
        else:
            self._enqueue(data)
        if not self.closed:
            self.last_write = time.monotonic()
            self._streams.written(self)

    def close(self) -> None:
        """Close the socket and let the registry release the subscription; idempotent."""
        self._end()

    def _end(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.sub.closed = True
        for watcher in (self._reader, self._writer):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._reader = self._writer = self._queue = None
        try:
            self._sock.close()
        except OSError:
            pass
        self._streams.release(self)

    # -- carrying it to another worker -------------------------------------------------

    @property
    def carriable(self) -> bool:
        """Whether it can be carried: open, with nothing waiting to be written."""
        return not self.closed and self._queue is None

    def state(self) -> dict:
        """Everything a successor needs besides the socket (succession.py)."""
        sub = self.sub
        return {
            "user": sub.user_id,
            "login": sub.login,
            "lease": self.lease,
            "unseen": self.unseen.state(),
            "looking": sub.looking,
        }

    def fileno(self) -> int:
        return self._sock.fileno()

    def detach(self) -> None:
        """Give the connection up without closing it: a successor owns it (and the lease) now.

        Closing this process's descriptor sends nothing: the successor's keeps it open."""
        if not self.closed:
            self.lease = None
        self._end()

    # -- the event loop's callbacks --------------------------------------------------

    def _enqueue(self, data: bytes | memoryview) -> None:
        if self._queue is None:
            self._queue = deque()
            self._writer = self._streams.loop.io(self._sock.fileno(), _WRITE)
            self._writer.start(self._flush)
        elif self._queued + len(data) > self._streams.max_queued:
            log.info("user %s's stream fell %d bytes behind; closing it", self.sub.user_id, self._queued)
            telemetry.SLOW_CLIENT_CUTOFFS.inc()
            self.close()
            return
        self._queue.append(data)
        self._queued += len(data)

    def _flush(self) -> None:
        queue = self._queue
        try:
            while queue:
                item = queue[0]
                sent = self._sock.send(item)
                self._queued -= sent
                if sent < len(item):
                    queue[0] = memoryview(item)[sent:]
                    return
                queue.popleft()
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        if self._writer is not None:
            self._writer.stop()
            self._writer.close()
        self._writer = self._queue = None
        self._queued = 0

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()  # the browser went away
        # Anything else a client sends on an event stream is ignored.


class Streams:
    """This process's open streams: adoption, heartbeats, store re-reads, presence and release.

    One housekeeping greenlet releases closed streams' subscriptions, starts store re-reads
    (one query per user, a few at a time) and writes presence changes; another writes the
    keepalive comments, walking only the streams whose last write is old enough; a third
    vouches for this worker's users in ``presence`` every interval (presence.py).
    """

    def __init__(
        self,
        hub: PubSub,
        read_store: Callable[[int, int], list[Event]],
        *,
        heartbeat: float,
        capacity: int = 0,
        cap: StreamCap | None = None,
        drain_retry_ms: int = 5000,
        handoff_seconds: float = 10.0,
        open_logins: Callable[[Collection[str]], set[str]] | None = None,
        max_queued: int = 256 * 1024,
        reread_concurrency: int = 4,
        presence: Presence | None = None,
    ) -> None:
        """``open_logins(tokens)``: those of ``tokens`` not revoked (checked for carried streams)."""
        self.hub = hub
        self.cap = cap
        self.drain_retry_ms = drain_retry_ms
        self.handoff_seconds = handoff_seconds
        self._open_logins = open_logins
        self.loop = gevent.get_hub().loop
        self.heartbeat = heartbeat
        self.capacity = capacity or default_capacity()
        self.max_queued = max_queued
        self._read_store = read_store
        self.presence = presence
        # The streams whose tab is looking, by user; users whose looking changed, to write.
        self._looking: dict[str, set[LiveStream]] = {}
        self._looking_changes: set[str] = set()
        # Presence matters less than delivery: its failures are summed up once a minute.
        self._presence_failures = FailureTally(log, "write presence", interval=60.0)
        # Every open stream, least recently written first (for the heartbeat).
        self._by_write: OrderedDict[LiveStream, None] = OrderedDict()
        self._released: list[tuple[Subscription, str | None]] = []
        self._rereads: dict[str, set[LiveStream]] = {}
        self._work = gevent.event.Event()
        self._pool = gevent.pool.Pool(reread_concurrency)
        self._greenlets: list[gevent.Greenlet] = []

    def adopt(
        self, sub: Subscription, fd: int, unseen: Unseen, head: bytes, lease: str | None = None
    ) -> LiveStream:
        """Take over socket ``fd``: write ``head``, then whatever waited in ``sub``'s mailbox.

        It owns ``fd`` (and ``lease``, see caps.py) from the call on: whatever fails closes it
        and releases ``sub`` and ``lease``.
        """
        self._start()
        sock = raw_socket(fd)
        try:
            stream = LiveStream(self, sub, sock, unseen, lease)
        except BaseException:
            sock.close()
            self._released.append((sub, lease))
            self._work.set()
            raise
        self._by_write[stream] = None
        telemetry.STREAMS_OPEN.inc()
        try:
            if head:
                stream.write(head)
            stream.send_events(sub.attach(stream))
        except BaseException:
            stream.close()
            raise
        if sub.looking:
            self.looking_changed(stream)
        if sub.closed:
            stream.close()
        elif sub.needs_reread:
            sub.needs_reread = False
            stream.reread()
        return stream

    def drain(self, successors: Successors | None = None) -> None:
        """Give every stream up (the worker is stopping): carried to ``successors`` where it
        can be, else closed, so its browser reconnects to another worker.

        A closed stream first gets a ``retry:`` drawn from [0.5 s, ``drain_retry_ms``], so the
        browsers come back spread over that window, not in the same millisecond.
        """
        if successors is not None and self.handoff_seconds > 0 and self._by_write:
            self._carry_out(successors)
        for stream in list(self._by_write):
            stream.write(f"retry: {random.randint(500, max(500, self.drain_retry_ms))}\n\n".encode())
        self.hub.shutdown()

    def _carry_out(self, successors: Successors) -> None:
        """Carry the streams to the successors, a user's streams together, a packet at a time.

        The hub keeps delivering while the new workers boot. From the moment a packet's
        streams are marked ``leaving`` they write nothing more here; what they miss from then
        on the successor reads from the store (above what each has seen).
        """
        started = time.monotonic()
        if not successors.wait(self.handoff_seconds):
            log.warning("no worker to take %d streams over; closing them", len(self))
            return
        by_user: dict[str, list[LiveStream]] = {}
        for stream in self._by_write:
            if stream.carriable:
                by_user.setdefault(stream.sub.user_id, []).append(stream)
        carried = offered = 0
        packet: list[LiveStream] = []
        for mine in [*by_user.values(), []]:  # the empty one sends the last packet
            if packet and (not mine or len(packet) + len(mine) > PACKET_FDS):
                offered += len(packet)
                carried += self._carry_packet(successors, packet)
                packet = []
            packet.extend(mine)
            while len(packet) >= PACKET_FDS:
                offered += PACKET_FDS
                carried += self._carry_packet(successors, packet[:PACKET_FDS])
                packet = packet[PACKET_FDS:]
        telemetry.STREAMS_CARRIED.inc(carried)
        log.info(
            "carried %d streams to the workers succeeding this one in %.2f s (%d refused, %d left to close)",
            carried,
            time.monotonic() - started,
            offered - carried,
            len(self),
        )

    def _carry_packet(self, successors: Successors, packet: list[LiveStream]) -> int:
        packet = [s for s in packet if s.carriable]  # one may have closed while others travelled
        for stream in packet:
            stream.leaving = True
        if successors.carry(CARRIED, [(s.state(), s.fileno()) for s in packet]):
            for stream in packet:
                stream.detach()
            return len(packet)
        for stream in packet:
            stream.leaving = False  # closed with the others: its browser reconnects and replays
        return 0

    def carry_in(self, items: list[tuple[dict, int]]) -> Streams:
        """Adopt streams a stopping worker carried here (``(state, fd)``); returns the owner.

        Each gets its subscription (confirmed), then a store re-read above what it has seen;
        a stream whose login was revoked meanwhile is closed. It owns every descriptor.
        """
        self._start()
        gevent.spawn(self._take_in, items)
        return self

    def _take_in(self, items: list[tuple[dict, int]]) -> None:
        adopted: list[LiveStream] = []
        pool = gevent.pool.Pool(64)  # a subscription waits for Redis' confirmation: many at once

        def take(state: dict, fd: int) -> None:
            try:
                unseen = Unseen.restore(state["unseen"])
                if not isinstance(state["user"], str | int) or isinstance(state["user"], bool):
                    raise TypeError(f"a user key, not {state['user']!r}")
                user_id, login, lease = user_key(state["user"]), state["login"], state["lease"]
                looking = state.get("looking") is True
            except (KeyError, ValueError, TypeError, AttributeError) as exc:
                log.warning("could not adopt a carried stream (%r); its browser reconnects", exc)
                os.close(fd)
                return
            if self.full:
                log.warning("refused a carried stream: this worker holds %d, its limit", len(self))
                os.close(fd)
                return
            try:
                sub = self.hub.subscribe(user_id, login)
            except Exception:
                log.exception("could not subscribe a carried stream; its browser reconnects")
                os.close(fd)
                return
            sub.looking = looking
            try:
                stream = self.adopt(sub, fd, unseen, b"", lease)  # closes fd itself if it fails
            except Exception:
                log.exception("could not adopt a carried stream; its browser reconnects")
                return
            if not stream.closed:
                adopted.append(stream)

        for state, fd in items:
            pool.spawn(take, state, fd)
        pool.join()
        self._close_revoked(adopted)
        for stream in adopted:
            stream.reread()

    def _close_revoked(self, streams: list[LiveStream]) -> None:
        """Close the streams whose login ended while they travelled (its control message is missed)."""
        if self._open_logins is None:
            return
        tokens = {s.sub.login for s in streams if s.sub.login is not None}
        try:
            alive = self._open_logins(tokens)
        except Exception:
            log.exception("could not check the logins of carried streams; closing them")
            alive = set()
        for stream in streams:
            if stream.sub.login is not None and stream.sub.login not in alive:
                stream.close()

    def __len__(self) -> int:
        return len(self._by_write)

    @property
    def full(self) -> bool:
        """Whether another stream would eat into the descriptors requests, Redis and the DB need."""
        return len(self._by_write) >= self.capacity

    # -- called by the streams ---------------------------------------------------------

    def written(self, stream: LiveStream) -> None:
        self._by_write.move_to_end(stream)

    def release(self, stream: LiveStream) -> None:
        if stream in self._by_write:
            del self._by_write[stream]
            telemetry.STREAMS_OPEN.dec()
        self._released.append((stream.sub, stream.lease))
        mine = self._looking.get(stream.sub.user_id)
        if mine is not None and stream in mine:
            if stream.leaving:  # carried to a successor, which says it looks from now on
                mine.discard(stream)
                if not mine:
                    del self._looking[stream.sub.user_id]
            else:  # the tab is gone: its looking goes with it
                stream.sub.looking = False
                self.looking_changed(stream)
        self._work.set()

    def looking_changed(self, stream: LiveStream) -> None:
        """Note whether ``stream``'s tab looks; the user's change is written soon, once."""
        user_id = stream.sub.user_id
        mine = self._looking.setdefault(user_id, set())
        was = bool(mine)
        if stream.sub.looking and not stream.closed:
            mine.add(stream)
        else:
            mine.discard(stream)
        if not mine:
            del self._looking[user_id]
        if was != bool(mine) or stream.sub.looking:
            self._looking_changes.add(user_id)
            self._work.set()

    def reread(self, stream: LiveStream) -> None:
        self._rereads.setdefault(stream.sub.user_id, set()).add(stream)
        self._work.set()

    # -- housekeeping --------------------------------------------------------------------

    def _start(self) -> None:
        if not self._greenlets:
            self._greenlets = [gevent.spawn(self._housekeep), gevent.spawn(self._beat)]
            if self.presence is not None:
                self._greenlets.append(gevent.spawn(self._vouch))
            if self.cap is not None and self.cap.limit:
                self._greenlets.append(gevent.spawn(self._renew_leases))

    def _renew_leases(self) -> None:
        while True:
            gevent.sleep(self.cap.lease_seconds / 3)
            self.cap.renew([(s.sub.user_id, s.lease) for s in self._by_write if s.lease is not None])

    def stop(self) -> None:
        """Stop the housekeeping greenlets (tests; a stopping worker just exits)."""
        gevent.killall(self._greenlets)
        self._greenlets = []

    def _housekeep(self) -> None:
        while True:
            self._work.wait()
            self._work.clear()
            released, self._released = self._released, []
            for sub, lease in released:
                try:
                    self.hub.unsubscribe(sub)
                    if lease is not None and self.cap is not None:
                        self.cap.release(sub.user_id, lease)
                except Exception:  # never let one failure stop releases, re-reads and this loop
                    log.exception("could not release user %s's stream", sub.user_id)
            rereads, self._rereads = self._rereads, {}
            for user_id, streams in rereads.items():
                self._pool.spawn(self._reread_user, user_id, streams)
            changes, self._looking_changes = self._looking_changes, set()
            for user_id in changes if self.presence is not None else ():
                try:
                    self.presence.mark_looking(user_id, user_id in self._looking)
                    self._presence_failures.succeeded()
                except Exception as exc:  # noqa: BLE001 - summed up; the next vouching writes it again
                    self._presence_failures.failed(exc)

    def _vouch(self) -> None:
        """Every interval, one write of this worker's users: connected, and those looking."""
        while True:
            connected = {stream.sub.user_id for stream in self._by_write}
            try:
                self.presence.refresh(connected, list(self._looking))
                self._presence_failures.succeeded()
            except Exception as exc:  # noqa: BLE001 - Redis away: summed up, tried again next interval
                self._presence_failures.failed(exc)
            gevent.sleep(self.presence.interval)

    def _reread_user(self, user_id: str, streams: set[LiveStream]) -> None:
        open_streams = [s for s in streams if not s.closed]
        if not open_streams:
            return
        telemetry.STORE_REREADS.inc()
        try:
            events = self._read_store(user_id, min(s.unseen.floor for s in open_streams))
        except Exception:
            log.exception("could not re-read the store of user %s; closing their streams", user_id)
            # Their browsers reconnect and replay from their Last-Event-ID.
            for stream in open_streams:
                stream.close()
            return
        for stream in open_streams:
            stream.send_events(events)

    def _beat(self) -> None:
        # Each sweep writes to the streams that would otherwise reach `heartbeat` silent
        # before the next one, so no stream stays silent longer than `heartbeat`.
        interval = min(1.0, self.heartbeat / 4)
        while True:
            gevent.sleep(interval)
            due_before = time.monotonic() - self.heartbeat + interval
            due = []
            for stream in self._by_write:
                if stream.last_write > due_before:
                    break
                due.append(stream)
            for stream in due:
                stream.write(KEEPALIVE)
