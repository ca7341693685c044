"""The per-process hub: one Redis pub/sub connection under this worker's fan-out (fanout.py).

Each gunicorn gevent worker has one ``Hub``, the Redis backend of its streams. It subscribes
to ``notifications:<id>`` only while that user has an open stream in this worker (the
fan-out's reference counts) and hands every message to the fan-out. A listener greenlet holds
the connection (connects, subscribes, reconnects); the replies are read and handled by the
event loop itself, as the socket becomes readable (``_Reading``), like the streams' own writes.
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
from flask_tidings.events import channel_for, user_id_from_channel, user_key
from flask_tidings.fanout import Fanout, Subscription
from flask_tidings.fences import redis_socket
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
        fanout: Fanout | None = None,
    ) -> None:
        self._connect = connect
        # The streams this hub delivers to (a cluster's node hubs each have their own).
        self.fanout = fanout or Fanout(key_of)
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
        self._conn: Any = None
        self._reading: _Reading | None = None
        self._write_lock = gevent.lock.RLock()
        self._pending: dict[str, int] = {}  # SUBSCRIBEs sent and not yet confirmed
        self._subscribed: set[str] = set()  # confirmed on the current connection
        self._waiters: dict[str, gevent.event.Event] = {}
        self._reread_channels: set[str] = set()
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

    def subscribe(self, user_id: Any, session: str | None = None) -> Subscription:
        """Register a stream for ``user_id``; returns once Redis confirmed the channel.

        When Redis is away it returns after ``subscribe_timeout``; the stream reads the
        store now and again when the listener has reconnected.
        """
        self.start()
        sub = Subscription(user_id, session)
        channel = channel_for(sub.user_id)
        if self.fanout.add(sub):
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
        if not self.fanout.remove(sub):
            return
        telemetry.CHANNELS_SUBSCRIBED.dec()
        channel = channel_for(sub.user_id)
        with self._write_lock:
            self._subscribed.discard(channel)
            self._send(self._unsubscribe_cmd, channel)

    def users(self) -> list[str]:
        """The users whose channels this hub subscribes."""
        return self.fanout.users()

    def release(self, user_id: Any, tell_server: bool = True) -> set[Subscription]:
        """Give up ``user_id``'s channel and hand back its streams (they move to another hub)."""
        user_id = user_key(user_id)
        subs = self.fanout.take(user_id)
        if not subs:
            return subs
        telemetry.CHANNELS_SUBSCRIBED.dec()
        channel = channel_for(user_id)
        with self._write_lock:
            self._subscribed.discard(channel)
            self._pending.pop(channel, None)
            self._reread_channels.discard(channel)
            if tell_server:
                self._send(self._unsubscribe_cmd, channel)
        waiter = self._waiters.pop(channel, None)
        if waiter is not None:
            waiter.set()  # a connect waiting for it reads the store now; the new hub rereads it
        return subs

    def adopt(self, user_id: Any, subs: set[Subscription]) -> None:
        """Take over streams whose channel lived on another hub: subscribe it here, and have
        them re-read the store once it is confirmed (whatever was published meanwhile)."""
        if not subs:
            return
        self.start()
        if not self.fanout.put(user_id, subs):
            for sub in subs:
                sub.request_reread()
            return
        telemetry.CHANNELS_SUBSCRIBED.inc()
        channel = channel_for(user_id)
        with self._write_lock:
            self._reread_channels.add(channel)
            self._pending[channel] = self._pending.get(channel, 0) + 1
            self._send(self._subscribe_cmd, channel)

    def shutdown(self) -> None:
        """End every stream now (worker stopping) so browsers reconnect elsewhere at once."""
        self._stopping = True
        log.info("hub shutting down: closed %d streams", self.fanout.close_all())

    def stats(self) -> dict[str, Any]:
        """Counts for operators and tests."""
        return {**self.fanout.stats(), "connected": self.connected.is_set()}

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
            channels = [channel_for(user_id) for user_id in self.fanout.users()]
            self._pending = dict.fromkeys(channels, 1)
            self._reread_channels = set(channels)
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
            self.fanout.dispatch(channel, reply[2])
        elif kind in (b"subscribe", b"ssubscribe"):
            self._confirm(channel)
        elif kind == b"sunsubscribe" and user_id_from_channel(channel) in self.fanout:
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
        if user_id not in self.fanout:
            return
        self._subscribed.add(channel)
        waiter = self._waiters.pop(channel, None)
        if waiter is not None:
            waiter.set()
        if channel in self._reread_channels:
            self._reread_channels.discard(channel)
            self.fanout.request_reread(user_id)


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
        self._sock = redis_socket(conn)
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
