"""The per-process hub: fan-out, reference-counted subscriptions, slow consumers, reconnects.

The hub's pub/sub connection is replaced by a scripted one that answers like Redis does
(SUBSCRIBE is confirmed, messages arrive as ``[b"message", channel, payload]``).
"""

from __future__ import annotations

import fcntl
import logging
import socket
import struct
import termios

import gevent
import gevent.socket
import pytest
import redis

from flask_tidings.events import Event
from flask_tidings.fanout import Subscription
from flask_tidings.hub import Hub
from flask_tidings.kinds import session_tag


class ScriptedPubSub:
    """A pub/sub connection: records commands, confirms subscriptions, delivers what the test
    pushes. The hub reads a real socket: what the test pushes is written to its other end as
    RESP, an error reply as one, and any other exception closes it."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []
        self._sock, server = socket.socketpair()
        self._sock.setblocking(False)
        # Cooperative, so that a reply bigger than the socket's buffer is read while written.
        self._server = gevent.socket.socket(fileno=server.detach())
        self._open = True
        self.replies = self  # the test's side: replies.put(...)

    def send_command(self, *args, check_health=True):
        self.sent.append(args)
        if args[0] in ("SUBSCRIBE", "UNSUBSCRIBE", "SSUBSCRIBE", "SUNSUBSCRIBE"):
            for n, channel in enumerate(args[1:], 1):
                self.put([args[0].lower().encode(), channel.encode(), n])

    def put(self, reply) -> None:
        if isinstance(reply, redis.ResponseError):
            self._server.sendall(b"-%s\r\n" % str(reply).encode())
        elif isinstance(reply, Exception):
            self._open = False
            self._server.close()
        elif self._open:
            self._server.sendall(resp(reply))

    def settle(self) -> None:
        """Until the hub has read everything written to it (it handles what it reads at once)."""
        with gevent.Timeout(5, AssertionError("the hub did not read its connection")):
            gevent.sleep(0)
            while self._sock.fileno() != -1 and unread(self._sock):
                gevent.sleep(0.001)

    def disconnect(self):
        self._open = False
        self._sock.close()
        self._server.close()

    def commands(self, name):
        return [a for a in self.sent if a[0] == name]


def resp(reply) -> bytes:
    if isinstance(reply, list):
        return b"*%d\r\n" % len(reply) + b"".join(resp(r) for r in reply)
    if isinstance(reply, int):
        return b":%d\r\n" % reply
    return b"$%d\r\n%s\r\n" % (len(reply), reply)


def unread(sock: socket.socket) -> int:
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]


@pytest.fixture
def conns():
    return []


@pytest.fixture
def hub(conns):
    def connect():
        conn = ScriptedPubSub()
        conns.append(conn)
        return conn

    hub = Hub(connect, ping_interval=60, subscribe_timeout=1, min_backoff=0.01, max_backoff=0.05)
    yield hub
    hub.stop()


def publish(conn: ScriptedPubSub, user_id: int, event: Event | bytes) -> None:
    payload = event if isinstance(event, bytes) else event.to_json().encode()
    conn.replies.put([b"message", f"notifications:{user_id}".encode(), payload])
    conn.settle()


def ev(i: int, name: str = "unread_message_count") -> Event:
    return Event(name=name, data=i, timestamp=1.0, id=i)


def test_fan_out_reaches_every_stream_of_that_user_only(hub, conns):
    a1, a2 = hub.subscribe(1), hub.subscribe(1)
    b = hub.subscribe(2)
    publish(conns[0], 1, ev(10))
    assert a1.take_pending() == [ev(10)] and a2.take_pending() == [ev(10)]
    assert b.take_pending() == []


def test_one_subscribe_per_user_and_unsubscribe_with_the_last_stream(hub, conns):
    subs = [hub.subscribe(1) for _ in range(40)]
    conn = conns[0]
    assert conn.commands("SUBSCRIBE") == [("SUBSCRIBE", "notifications:1")]
    assert hub.stats() == {"users": 1, "streams": 40, "connected": True}
    for sub in subs[:-1]:
        hub.unsubscribe(sub)
    assert conn.commands("UNSUBSCRIBE") == []
    hub.unsubscribe(subs[-1])
    hub.unsubscribe(subs[-1])  # twice is harmless
    assert conn.commands("UNSUBSCRIBE") == [("UNSUBSCRIBE", "notifications:1")]
    assert hub.stats()["users"] == 0
    publish(conn, 1, ev(3))
    assert subs[0].take_pending() == []


def test_resubscribing_after_the_last_left_waits_for_a_fresh_confirmation(hub, conns):
    hub.unsubscribe(hub.subscribe(1))
    sub = hub.subscribe(1)
    assert [c[0] for c in conns[0].sent] == ["SUBSCRIBE", "UNSUBSCRIBE", "SUBSCRIBE"]
    assert "notifications:1" in hub._subscribed
    publish(conns[0], 1, ev(5))
    assert sub.take_pending() == [ev(5)]


def test_slow_consumer_keeps_latest_per_key_then_falls_back_to_the_store(hub, conns):
    sub = hub.subscribe(1)
    conn = conns[0]
    for i in range(1, 1001):
        publish(conn, 1, ev(i))
    assert sub.take_pending() == [ev(1000)], "a thousand counts coalesce into the latest"
    for i in range(Subscription.MAX_PENDING + 1):
        publish(conn, 1, ev(2000 + i, name=f"kind{i}"))
    assert sub.pending == 0 and sub.needs_reread, "too many keys: the stream re-reads the store"


def test_malformed_messages_are_logged_and_dropped(hub, conns, caplog):
    sub = hub.subscribe(1)
    with caplog.at_level(logging.WARNING, logger="flask_tidings.hub"):
        publish(conns[0], 1, b"not json")
        publish(conns[0], 1, b'{"data": 1}')
        publish(conns[0], 1, b'{"name": "announcement", "data": "still here"}')
    assert "dropped a message on notifications:1" in caplog.text
    [event] = sub.take_pending()
    assert event.name == "announcement" and event.id is None


def test_session_ended_closes_only_that_login(hub, conns):
    mine, other_tab_same_login, other_login = (
        hub.subscribe(1, "s1"),
        hub.subscribe(1, "s1"),
        hub.subscribe(1, "s2"),
    )
    publish(conns[0], 1, Event(name="session_ended", data={"session": session_tag("s1")}, timestamp=1.0))
    assert mine.closed and other_tab_same_login.closed and not other_login.closed
    assert other_login.take_pending() == [], "the control message is not forwarded"


def test_reconnect_resubscribes_and_asks_streams_to_reread(hub, conns):
    a, b = hub.subscribe(1), hub.subscribe(2)
    conns[0].replies.put(redis.ConnectionError("Connection reset by peer"))
    while len(conns) < 2 or not hub.connected.is_set():
        gevent.sleep(0.01)
    conns[1].settle()
    assert conns[1].commands("SUBSCRIBE") == [("SUBSCRIBE", "notifications:1", "notifications:2")]
    assert a.needs_reread and b.needs_reread
    publish(conns[1], 2, ev(9))
    assert b.take_pending() == [ev(9)]


def test_subscribe_while_redis_is_away_returns_and_catches_up_later(conns):
    attempts = []

    def connect():
        attempts.append(1)
        if len(attempts) < 3:
            raise redis.ConnectionError("refused")
        conn = ScriptedPubSub()
        conns.append(conn)
        return conn

    hub = Hub(connect, ping_interval=60, subscribe_timeout=0.01, min_backoff=0.01, max_backoff=0.02)
    sub = hub.subscribe(7)
    assert not sub.needs_reread
    while not hub.connected.is_set():
        gevent.sleep(0.01)
    conns[0].settle()
    assert conns[0].commands("SUBSCRIBE") == [("SUBSCRIBE", "notifications:7")]
    assert sub.needs_reread, "what was published while away is read from the store"
    hub.stop()


def test_shutdown_closes_every_stream(hub):
    subs = [hub.subscribe(1), hub.subscribe(2)]
    hub.shutdown()
    assert all(s.closed for s in subs)


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.rereads = 0
        self.closed = False

    def send_event(self, event: Event) -> None:
        self.events.append(event)

    def reread(self) -> None:
        self.rereads += 1

    def close(self) -> None:
        self.closed = True


def test_attach_hands_over_what_waited_then_forwards_everything_directly():
    sub = Subscription(1, None)
    sub.offer(ev(1))
    sub.offer(ev(2))
    sink = RecordingSink()
    assert sub.attach(sink) == [ev(2)], "while opening, the latest per key waits"
    sub.offer(ev(3))
    sub.request_reread()
    sub.close()
    assert sink.events == [ev(3)] and sink.rereads == 1 and sink.closed


def test_a_failed_send_makes_the_listener_reconnect_and_resubscribe(hub, conns):
    hub.subscribe(1)
    broken = conns[0]

    def refuse(*args, check_health=True):
        raise redis.ConnectionError("broken pipe")

    broken.send_command = refuse
    broken.disconnect = lambda: broken.replies.put(redis.ConnectionError("closed"))
    sub2 = hub.subscribe(2)  # its SUBSCRIBE fails on the broken connection
    while len(conns) < 2 or "notifications:2" not in hub._subscribed:
        gevent.sleep(0.01)
    assert conns[1].commands("SUBSCRIBE") == [("SUBSCRIBE", "notifications:1", "notifications:2")]
    publish(conns[1], 2, ev(4))
    assert sub2.take_pending() == [ev(4)]


def test_a_connection_silent_for_three_ping_intervals_is_replaced_and_streams_reread(conns):
    """A Redis that stops answering without closing (a dead host, a cut cable) is noticed."""

    def connect():
        conns.append(ScriptedPubSub())
        return conns[-1]

    hub = Hub(connect, ping_interval=0.05, subscribe_timeout=1, min_backoff=0.01, max_backoff=0.02)
    try:
        sub = hub.subscribe(3)
        conns[0].settle()
        sub.needs_reread = False
        with gevent.Timeout(5, AssertionError("the silent connection was never replaced")):
            while len(conns) < 2 or not hub.connected.is_set():
                gevent.sleep(0.01)
        conns[1].settle()
        assert conns[0].commands("PING"), "the pinger asked"
        assert conns[1].commands("SUBSCRIBE") == [("SUBSCRIBE", "notifications:3")]
        assert sub.needs_reread, "what was published meanwhile is read from the store"
    finally:
        hub.stop()


def test_a_connection_that_answers_its_pings_is_kept(conns):
    class Answering(ScriptedPubSub):
        def send_command(self, *args, check_health=True):
            super().send_command(*args, check_health=check_health)
            if args[0] == "PING":
                self.put([b"pong", b""])

    def connect():
        conns.append(Answering())
        return conns[-1]

    hub = Hub(connect, ping_interval=0.05, subscribe_timeout=1, min_backoff=0.01, max_backoff=0.02)
    try:
        hub.subscribe(3)
        with gevent.Timeout(5, AssertionError("not enough pings")):
            while len(conns[0].commands("PING")) < 8:  # more than twice the silence allowed
                gevent.sleep(0.01)
        assert len(conns) == 1 and hub.connected.is_set()
    finally:
        hub.stop()
