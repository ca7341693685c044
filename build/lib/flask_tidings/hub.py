"""The per-process hub: one Redis pub/sub connection fanning out to this worker's streams.

Each gunicorn gevent worker has one ``Hub``. It subscribes to ``notifications:<id>`` only
while that user has an open stream in this worker (reference-counted) and offers every
message to the user's streams. A listener greenlet holds the connection (connects,
subscribes, reconnects); the replies are read and handled by the event loop itself, as
the socket becomes readable (``_Reading``), like the streams' own writes.
Offering never blocks the event loop: an open stream writes to its socket without waiting
(see ``live.py``), and a stream still being opened keeps the latest event per key.
When Redis goes away the listener reconnects with capped exponential backoff,
re-subscribes, and asks every stream to re-read the store, so nothing stored is lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.lock
import gevent.monkey
import hiredis
import redis
from redis.backoff import NoBackoff
from redis.exceptions import InvalidResponse
from redis.retry import Retry

from flask_tidings import telemetry
from flask_tidings.events import Event, channel_for, user_id_from_channel
from flask_tidings.kinds import SESSION_ENDED, session_tag
from flask_tidings.tally import FailureTally

log = logging.getLogger(__name__)


class StreamingUnavailable(RuntimeError):
    """Raised when streams are asked of a server that cannot hold them (no gevent, no hook)."""


def require_gevent() -> None:
    """Refuse to stream from a sync/threaded worker, where each stream would pin a worker."""
    if not gevent.monkey.is_module_patched("socket"):
        raise StreamingUnavailable(
            "/stream needs a gevent-patched server: run `gunicorn -c gunicorn.conf.py wsgi:app` "
            "(or `make run`). Sync or threaded workers and `flask run` would hold one worker "
            "per open browser tab."
        )


class Subscription:
    """One stream as the hub sees it: whose it is, and where its events go.

    While the stream is being opened (the store is read, the replay written) events wait
    in a mailbox that keeps the latest per key; once a ``sink`` is attached they go
    straight to it. A sink has ``send_event(event)``, ``resync()`` and ``close()``.
    """

    MAX_PENDING = 64

    __slots__ = ("user_id", "login", "session_tag", "resync", "closed", "_mailbox", "_sink")

    def __init__(self, user_id: int, session: str | None) -> None:
        self.user_id = user_id
        self.login = session  # the login token, for a worker this stream is carried to
        self.session_tag = session_tag(session) if session else None
        self.resync = False
        self.closed = False
        self._mailbox: dict[str, Event] = {}
        self._sink: Any = None

    def offer(self, event: Event) -> None:
        """Deliver ``event`` or queue it, replacing a pending one with the same key; never blocks."""
        if self._sink is not None:
            self._sink.send_event(event)
            return
        key = event.key if event.id is not None else "ephemeral:" + event.name
        self._mailbox.pop(key, None)
        self._mailbox[key] = event
        if len(self._mailbox) > self.MAX_PENDING:
            # Too far behind: forget the backlog, the store holds what matters.
            self._mailbox.clear()
            self.resync = True

    def request_resync(self) -> None:
        """Ask the stream to re-read the store (after a reconnect)."""
        if self._sink is not None:
            self._sink.resync()
        else:
            self.resync = True

    def close(self) -> None:
        """End the stream (now, or as soon as it is attached)."""
        self.closed = True
        if self._sink is not None:
            self._sink.close()

    def drain(self) -> list[Event]:
        """Take everything pending, oldest first."""
        events = list(self._mailbox.values())
        self._mailbox.clear()
        return events

    def attach(self, sink: Any) -> list[Event]:
        """Send future events to ``sink``; returns those that waited meanwhile."""
        events = self.drain()
        self._sink = sink
        return events

    @property
    def pending(self) -> int:
        """How many events wait in the mailbox."""
        return len(self._mailbox)


class Hub:
    """Reference-counted subscriptions over one pub/sub connection, for one process."""

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        ping_interval: float = 10.0,
        subscribe_timeout: float = 2.0,
        min_backoff: float = 0.1,
        max_backoff: float = 5.0,
        sharded: bool = False,
        on_moved: Callable[[list[str]], None] | None = None,
        on_lost: Callable[[], None] | None = None,
        key_of: Callable[[str, Any], str] | None = None,
    ) -> None:
        self._connect = connect
        self.key_of = key_of  # the kinds' store-key rule, for events read off the channel
        # Sharded pub/sub (a Redis Cluster node, see shards.py): SSUBSCRIBE, one channel per
        # command (a command's channels must share a slot); the cluster calls back when a
        # channel's slot moved away (``on_moved``) or this node cannot be reached (``on_lost``).
        self.sharded = sharded
        self._subscribe_cmd, self._unsubscribe_cmd = (
            ("SSUBSCRIBE", "SUNSUBSCRIBE") if sharded else ("SUBSCRIBE", "UNSUBSCRIBE")
        )
        self._on_moved, self._on_lost = on_moved, on_lost
        self.ping_interval = ping_interval
        self.subscribe_timeout = subscribe_timeout
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self._subs: dict[int, set[Subscription]] = {}
        self._conn: Any = None
        self._reading: _Reading | None = None
        self._write_lock = gevent.lock.RLock()
        self._pending: dict[str, int] = {}  # SUBSCRIBEs sent and not yet confirmed
        self._subscribed: set[str] = set()  # confirmed on the current connection
        self._waiters: dict[str, gevent.event.Event] = {}
        self._resync_channels: set[str] = set()
        self._greenlets: list[gevent.Greenlet] = []
        self._stopping = False
        self.connected = gevent.event.Event()
        # Set once the listener failed to reach Redis, until it is back: a new stream then
        # does not wait for a confirmation that cannot come (it re-reads the store when the
        # listener reconnects), and an outage is summed up in the log, not a line per retry.
        self._lost = False
        self._outage = FailureTally(log, "reach Redis from the notification hub")
        self._unconfirmed = FailureTally(log, "get a subscription confirmed in time")

    @classmethod
    def for_url(cls, url: str, *, ping_interval: float = 10.0, **options: Any) -> Hub:
        """A hub reading the Redis at ``url`` (``options``: the node's ``host`` and ``port``
        instead, and Hub's own keywords); refuses to exist without gevent."""
        require_gevent()
        kwargs = redis.connection.parse_url(url)
        for key in ("host", "port"):
            if key in options:
                kwargs[key] = options.pop(key)
        if options.get("sharded"):
            kwargs.pop("db", None)  # a cluster has database 0 only
        ping = float(ping_interval)
        kwargs.update(
            protocol=2,
            client_name="tidings-hub",
            socket_connect_timeout=2,
            # The pinger makes the server answer at least every ping interval.
            socket_timeout=3 * ping,
            socket_keepalive=True,
            health_check_interval=0,
            retry=Retry(NoBackoff(), 0),
        )

        def connect():
            conn = redis.Connection(**kwargs)
            conn.connect()
            return conn

        return cls(connect, ping_interval=ping, **options)

    # -- streams' side -------------------------------------------------------------

    def subscribe(self, user_id: int, session: str | None = None) -> Subscription:
        """Register a stream for ``user_id``; returns once Redis confirmed the channel.

        When Redis is away it returns after ``subscribe_timeout``; the stream reads the
        store now and again when the listener has reconnected.
        """
        self.start()
        sub = Subscription(user_id, session)
        channel = channel_for(user_id)
        subs = self._subs.get(user_id)
        if subs:
            subs.add(sub)
        else:
            self._subs[user_id] = {sub}
            telemetry.CHANNELS_SUBSCRIBED.inc()
            with self._write_lock:
                self._pending[channel] = self._pending.get(channel, 0) + 1
                self._send(self._subscribe_cmd, channel)
        if channel not in self._subscribed and not self._lost and not self._stopping:
            waiter = self._waiters.setdefault(channel, gevent.event.Event())
            if not waiter.wait(self.subscribe_timeout):
                self._unconfirmed.failed(f"none for {channel} within {self.subscribe_timeout:g} s")
            else:
                self._unconfirmed.succeeded()
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Release a stream; the channel is unsubscribed when its last stream leaves."""
        subs = self._subs.get(sub.user_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        if subs:
            return
        del self._subs[sub.user_id]
        telemetry.CHANNELS_SUBSCRIBED.dec()
        channel = channel_for(sub.user_id)
        with self._write_lock:
            self._subscribed.discard(channel)
            self._send(self._unsubscribe_cmd, channel)

    def close_session(self, user_id: int, tag: str) -> int:
        """Close the streams of one login (``session_tag``); returns how many."""
        closed = 0
        for sub in list(self._subs.get(user_id, ())):
            if sub.session_tag == tag:
                sub.close()
                closed += 1
        return closed

    def close_user(self, user_id: int) -> int:
        """Close every stream of ``user_id``; returns how many."""
        subs = list(self._subs.get(user_id, ()))
        for sub in subs:
            sub.close()
        return len(subs)

    def users(self) -> list[int]:
        """The users whose channels this hub subscribes."""
        return list(self._subs)

    def release(self, user_id: int, tell_server: bool = True) -> set[Subscription]:
        """Give up ``user_id``'s channel and hand back its streams (they move to another hub)."""
        subs = self._subs.pop(user_id, set())
        if not subs:
            return subs
        telemetry.CHANNELS_SUBSCRIBED.dec()
        channel = channel_for(user_id)
        with self._write_lock:
            self._subscribed.discard(channel)
            self._pending.pop(channel, None)
            self._resync_channels.discard(channel)
            if tell_server:
                self._send(self._unsubscribe_cmd, channel)
        waiter = self._waiters.pop(channel, None)
        if waiter is not None:
            waiter.set()  # a connect waiting for it reads the store now; the new hub resyncs it
        return subs

    def adopt(self, user_id: int, subs: set[Subscription]) -> None:
        """Take over streams whose channel lived on another hub: subscribe it here, and have
        them re-read the store once it is confirmed (whatever was published meanwhile)."""
        if not subs:
            return
        self.start()
        if user_id in self._subs:
            self._subs[user_id] |= subs
            for sub in subs:
                sub.request_resync()
            return
        self._subs[user_id] = set(subs)
        telemetry.CHANNELS_SUBSCRIBED.inc()
        channel = channel_for(user_id)
        with self._write_lock:
            self._resync_channels.add(channel)
            self._pending[channel] = self._pending.get(channel, 0) + 1
            self._send(self._subscribe_cmd, channel)

    def shutdown(self) -> None:
        """End every stream now (worker stopping) so browsers reconnect elsewhere at once."""
        self._stopping = True
        count = 0
        for subs in list(self._subs.values()):
            for sub in list(subs):
                count += not sub.closed  # those carried to another worker are closed here already
                sub.close()
        log.info("hub shutting down: closed %d streams", count)

    def stats(self) -> dict[str, Any]:
        """Counts for operators and tests."""
        return {
            "users": len(self._subs),
            "streams": sum(len(s) for s in self._subs.values()),
            "connected": self.connected.is_set(),
        }

    # -- listener's side -----------------------------------------------------------

    def start(self) -> None:
        """Start the listener and pinger (idempotent); the first subscribe does it too."""
        if not self._greenlets:
            self._greenlets = [self._spawn_listener(), gevent.spawn(self._ping)]

    def stop(self) -> None:
        """Stop listening and pinging, without closing streams (tests; see ``shutdown``)."""
        self._stopping = True
        gevent.killall(self._greenlets)
        self._greenlets = []

    def _spawn_listener(self) -> gevent.Greenlet:
        listener = gevent.spawn(self._listen)
        listener.link_exception(self._listener_died)
        return listener

    def _listener_died(self, listener: gevent.Greenlet) -> None:
        # Nothing a message carries can get here (see _listen); if something does, delivery
        # must not stop: a new listener reconnects, and every stream re-reads the store.
        log.error("hub listener died (%r); starting a new one", listener.exception)
        if not self._stopping and self._greenlets and self._greenlets[0] is listener:
            self._greenlets[0] = self._spawn_listener()

    def _send(self, *args: str) -> None:
        with self._write_lock:
            conn = self._conn
            if conn is None:
                return  # the listener subscribes everything wanted when it reconnects
            try:
                conn.send_command(*args, check_health=False)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self._outage.failed(f"could not send {args[0]}: {exc}")
                # The listener reconnects and subscribes everything wanted.
                self._conn = None
                if self._reading is not None:
                    self._reading.end(exc)
                conn.disconnect()

    def _ping(self) -> None:
        while not self._stopping:
            gevent.sleep(self.ping_interval)
            self._send("PING")

    def _listen(self) -> None:
        delay = self.min_backoff
        while not self._stopping:
            conn = reading = None
            try:
                conn = self._connect()
                self._attach(conn)
                reading = self._reading = _Reading(conn, self._on_reply)
                self._watch(reading)
            # InvalidResponse: bytes that are not RESP; the connection cannot be trusted after them.
            except (redis.ConnectionError, redis.TimeoutError, InvalidResponse, OSError) as exc:
                telemetry.HUB_RECONNECTS.inc()
                self._lost = True
                self._outage.failed(exc)
                if self._on_lost is not None:
                    self._on_lost()
            finally:
                if reading is not None:
                    reading.end()
                    self._reading = None
                    if reading.replied:
                        delay = self.min_backoff
                self._detach(conn)
            if not self._stopping:
                gevent.sleep(delay)
                delay = min(delay * 2, self.max_backoff)

    def _watch(self, reading: _Reading) -> None:
        """Wait while the event loop reads the connection; raise what ended it. The pinger makes
        Redis answer at least every ping interval, so three in silence mean it is gone."""
        silence = 3 * self.ping_interval
        while not reading.ended.wait(silence):
            if not reading.heard:
                raise redis.TimeoutError(f"Redis sent nothing for {silence:g} s")
            reading.heard = False
        raise reading.error

    def _on_reply(self, reply: Any) -> None:
        """One reply, in the event loop: nothing here may wait (see ``_Reading``)."""
        if isinstance(reply, redis.ResponseError):
            if not self.sharded:
                raise reply
            # A cluster node refusing a channel it does not serve (MOVED): ask where the
            # unconfirmed ones live now.
            self._moved(list(self._pending), reply)
            return
        try:
            self.handle_reply(reply)
        except Exception:  # one reply must never end delivery for every stream
            log.exception("hub dropped a reply it could not handle")

    def _attach(self, conn: Any) -> None:
        with self._write_lock:
            self._conn = conn
            self._subscribed.clear()
            channels = [channel_for(user_id) for user_id in self._subs]
            self._pending = dict.fromkeys(channels, 1)
            self._resync_channels = set(channels)
            if channels and self.sharded:
                for channel in channels:
                    conn.send_command(self._subscribe_cmd, channel, check_health=False)
            elif channels:
                conn.send_command(self._subscribe_cmd, *channels, check_health=False)
        self.connected.set()
        self._lost = False
        self._outage.succeeded()
        telemetry.HUB_CONNECTED.set(1)
        log.info("hub connected to Redis; subscribed to %d channels", len(channels))

    def _detach(self, conn: Any) -> None:
        with self._write_lock:
            if self._conn is conn:
                self._conn = None
            self._subscribed.clear()
            self._pending.clear()
        self.connected.clear()
        telemetry.HUB_CONNECTED.set(0)
        if conn is not None:
            conn.disconnect()

    def handle_reply(self, reply: Any) -> None:
        """Act on one reply read from the pub/sub connection."""
        if not isinstance(reply, list) or len(reply) < 3:
            return  # PONG and friends
        kind = reply[0]
        channel = _text(reply[1])
        if kind in (b"message", b"smessage"):
            self.dispatch(channel, reply[2])
        elif kind in (b"subscribe", b"ssubscribe"):
            self._confirm(channel)
        elif kind == b"sunsubscribe" and user_id_from_channel(channel) in self._subs:
            # Not asked for: the channel's slot moved to another node (a reshard, a failover).
            self._moved([channel], "the server unsubscribed it")

    def _moved(self, channels: list[str], why: object) -> None:
        log.info("hub: %d channel(s) left this node (%s); following them", len(channels), why)
        if self._on_moved is not None and channels:
            self._on_moved(channels)

    def _confirm(self, channel: str) -> None:
        left = self._pending.get(channel, 0) - 1
        if left > 0:
            self._pending[channel] = left
            return
        self._pending.pop(channel, None)
        user_id = user_id_from_channel(channel)
        if user_id not in self._subs:
            return
        self._subscribed.add(channel)
        waiter = self._waiters.pop(channel, None)
        if waiter is not None:
            waiter.set()
        if channel in self._resync_channels:
            self._resync_channels.discard(channel)
            for sub in list(self._subs[user_id]):
                sub.request_resync()

    def dispatch(self, channel: str, raw: bytes | str) -> None:
        """Parse one channel message once and offer it to the channel's local streams."""
        user_id = user_id_from_channel(channel)
        subs = self._subs.get(user_id) if user_id is not None else None
        if not subs:
            return
        try:
            event = Event.from_json(raw, self.key_of)
        except ValueError as exc:
            log.warning("dropped a message on %s: %s: %.200r", channel, exc, raw)
            return
        if event.name == SESSION_ENDED:
            data = event.data if isinstance(event.data, dict) else {}
            if data.get("all") is True:
                self.close_user(user_id)
            elif isinstance(data.get("session"), str):
                self.close_session(user_id, data["session"])
            return
        telemetry.DELIVERIES.inc(len(subs))
        for sub in list(subs):
            sub.offer(event)


class _Reading:
    """The hub's connection read by the event loop: when its socket is readable, a callback
    takes everything there, hiredis parses it, and each reply is handled then and there.

    Why not a greenlet blocked in ``read_response``: on this kind of host a greenlet's wake
    (socket wait, switch in, switch out) cost more than handling the replies it woke for,
    and a worker on a Redis Cluster has one such connection per master. Handling a reply
    never waits: messages go to streams that write without blocking (live.py), confirmations
    set events, and anything that must talk to Redis is spawned. Whatever ends the connection
    (EOF, an error, bytes that are not RESP, an exception from a reply) ends the reading,
    with the reason in ``error``, for the listener to reconnect.
    """

    __slots__ = ("ended", "error", "heard", "replied", "_sock", "_parser", "_handle", "_watcher")

    def __init__(self, conn: Any, handle: Callable[[Any], None]) -> None:
        sock = conn._sock  # redis-py's socket; under gevent a wrapper of the real, non-blocking one
        self._sock = getattr(sock, "_sock", sock)
        if self._sock.gettimeout() != 0:
            raise RuntimeError("the hub reads a non-blocking socket: run it under gevent")
        self._parser = hiredis.Reader(protocolError=InvalidResponse, replyError=redis.ResponseError)
        self._handle = handle
        self.ended = gevent.event.Event()
        self.error: BaseException = redis.ConnectionError("the hub stopped reading")
        self.heard = self.replied = False
        self._watcher = gevent.get_hub().loop.io(self._sock.fileno(), 1)
        self._watcher.start(self._on_readable)

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.end(exc)
            return
        if not data:
            self.end(redis.ConnectionError("Redis closed the connection"))
            return
        self.heard = True
        parser = self._parser
        parser.feed(data)
        try:
            while self._watcher is not None and (reply := parser.gets()) is not False:
                self.replied = True
                self._handle(reply)
        except BaseException as exc:  # noqa: BLE001 - handed to the listener, which decides
            self.end(exc)

    def end(self, error: BaseException | None = None) -> None:
        """Stop reading (idempotent); the first ``error`` is what the listener raises."""
        if self._watcher is None:
            return
        self._watcher.stop()
        self._watcher.close()
        self._watcher = None
        if error is not None:
            self.error = error
        self.ended.set()


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
