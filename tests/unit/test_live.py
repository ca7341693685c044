"""Open streams written without a greenlet each: order, slow clients, heartbeats, release.

The stream's socket is one end of a socketpair; the test reads the other end through a
gevent socket, so the event loop (and the streams' watchers) runs while the test waits.
"""

from __future__ import annotations

import socket

import gevent
import gevent.socket
import pytest

from flask_tidings.events import Event
from flask_tidings.fanout import Subscription
from flask_tidings.live import KEEPALIVE, Streams, Unseen


class FakeHub:
    def __init__(self) -> None:
        self.released: list[Subscription] = []

    def unsubscribe(self, sub: Subscription) -> None:
        self.released.append(sub)


class Store:
    """The user's stored notifications, and who asked for them."""

    def __init__(self) -> None:
        self.events: dict[int, list[Event]] = {}
        self.reads: list[int] = []
        self.fail = False

    def read(self, user_id: str, since_id: int) -> list[Event]:
        user_id = int(user_id)  # the engine names users by str(id); an integer-keyed store parses it
        self.reads.append(user_id)
        if self.fail:
            raise RuntimeError("database away")
        return [e for e in self.events.get(user_id, []) if e.id > since_id]


class Peer:
    """The browser's end: reads whole SSE frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = gevent.socket.socket(fileno=sock.detach())
        self.buf = b""

    def frames(self, n: int, timeout: float = 5.0) -> list[bytes]:
        with gevent.Timeout(timeout):
            while self.buf.count(b"\n\n") < n:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise EOFError(self.buf)
                self.buf += chunk
        parts = self.buf.split(b"\n\n")
        taken, self.buf = parts[:n], b"\n\n".join(parts[n:])
        return [p + b"\n\n" for p in taken]

    def at_eof(self, timeout: float = 5.0) -> bool:
        with gevent.Timeout(timeout):
            while chunk := self.sock.recv(65536):
                self.buf += chunk
        return True


def ev(i: int, name: str = "unread_message_count", data=None) -> Event:
    return Event(name=name, data=i if data is None else data, timestamp=1.0, id=i)


@pytest.fixture
def hub():
    return FakeHub()


@pytest.fixture
def store():
    return Store()


@pytest.fixture
def streams(hub, store):
    streams = Streams(hub, store.read, heartbeat=60)
    yield streams
    streams.stop()


def open_stream(streams: Streams, sub: Subscription, backlog: list[Event] = (), cursor: int = 0):
    """Adopt one end of a socketpair as the view does: head, ``retry:``, then the replay."""
    ours, theirs = socket.socketpair()
    unseen = Unseen(cursor)
    stream = streams.adopt(sub, ours.detach(), unseen, b"retry: 3000\n\n" + unseen.frames(backlog))
    return stream, Peer(theirs)


def test_head_then_what_waited_then_live_events_in_order_and_once(streams):
    sub = Subscription(1, None)
    sub.offer(ev(5))
    sub.offer(ev(7, "other"))
    stream, peer = open_stream(streams, sub, backlog=[ev(5)])
    sub.offer(ev(8))
    assert peer.frames(4) == [b"retry: 3000\n\n", ev(5).wire, ev(7, "other").wire, ev(8).wire]
    sub.offer(ev(8))
    sub.offer(ev(6, "other"))
    sub.offer(Event(name="announcement", data="hi", timestamp=2.0))
    assert peer.frames(1) == [Event(name="announcement", data="hi", timestamp=2.0).wire], (
        "ids already sent, or older than what was sent for their key, are not sent again"
    )
    assert len(streams) == 1


def test_a_vanished_browser_releases_its_subscription(streams, hub):
    sub = Subscription(1, None)
    stream, peer = open_stream(streams, sub)
    peer.sock.close()
    with gevent.Timeout(5):
        while not hub.released:
            gevent.sleep(0.01)
    assert hub.released == [sub] and stream.closed and sub.closed and len(streams) == 0


def test_close_ends_the_response_after_what_was_written(streams, hub):
    sub = Subscription(1, "login")
    stream, peer = open_stream(streams, sub)
    sub.offer(ev(1))
    sub.close()  # logout, or the worker stopping
    assert peer.at_eof()
    assert peer.buf == b"retry: 3000\n\n" + ev(1).wire


def test_a_client_too_far_behind_is_cut_off_after_whole_frames(hub, store):
    streams = Streams(hub, store.read, heartbeat=60, max_queued=32 * 1024)
    sub = Subscription(1, None)
    stream, peer = open_stream(streams, sub)
    pad = "x" * 2000
    for i in range(1, 2001):  # far more than the socket buffers and the queue hold
        sub.offer(ev(i, name=f"kind{i % 50}", data={"pad": pad}))
    assert stream.closed, "a client that stopped reading does not grow the worker without bound"
    assert peer.at_eof()
    *whole, rest = peer.buf.split(b"\n\n")
    assert whole[0] == b"retry: 3000"
    ids = [int(f.split(b"\n")[0].removeprefix(b"id: ")) for f in whole[1:]]
    assert ids == list(range(1, len(ids) + 1)), "what arrived is in order, each frame whole"
    assert len(ids) < 2000
    # The browser drops the cut-off frame and resumes from ids[-1] with Last-Event-ID.
    with gevent.Timeout(5):
        while not hub.released:
            gevent.sleep(0.01)


def test_reread_reads_the_store_once_per_user_and_sends_only_what_is_new(streams, store):
    subs = [Subscription(1, None), Subscription(1, None)]
    pairs = [open_stream(streams, s, cursor=3) for s in subs]
    store.events[1] = [ev(2), ev(4, "other"), ev(5)]
    subs[0].offer(ev(5))
    for sub in subs:
        sub.request_reread()
    first, second = (peer for _, peer in pairs)
    assert first.frames(3)[1:] == [ev(5).wire, ev(4, "other").wire]
    assert second.frames(3)[1:] == [ev(4, "other").wire, ev(5).wire]
    assert store.reads == [1]


def test_a_failed_store_read_closes_the_streams_so_browsers_reconnect(streams, store, hub):
    store.fail = True
    sub = Subscription(1, None)
    stream, peer = open_stream(streams, sub)
    sub.request_reread()
    assert peer.at_eof()
    assert stream.closed


def test_idle_streams_get_keepalives_and_busy_ones_do_not(hub, store):
    streams = Streams(hub, store.read, heartbeat=0.4)
    try:
        idle_sub, busy_sub = Subscription(1, None), Subscription(2, None)
        _, idle = open_stream(streams, idle_sub)
        _, busy = open_stream(streams, busy_sub)
        assert idle.frames(1) == [b"retry: 3000\n\n"] and busy.frames(1) == [b"retry: 3000\n\n"]
        got = []
        for i in range(1, 11):
            busy_sub.offer(ev(i))
            got += busy.frames(1)
            gevent.sleep(0.1)
        assert idle.frames(2, timeout=2) == [KEEPALIVE, KEEPALIVE]
        assert got == [ev(i).wire for i in range(1, 11)], "no keepalive between frequent events"
    finally:
        streams.stop()


def test_capacity_counts_open_streams_and_defaults_below_the_open_files_limit(hub, store):
    import resource

    from flask_tidings.live import default_capacity

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert 0 < default_capacity() < soft, "descriptors stay free for requests, Redis and the database"
    streams = Streams(hub, store.read, heartbeat=60, capacity=1)
    sub = Subscription(1, None)
    stream, peer = open_stream(streams, sub)
    assert streams.full
    peer.sock.close()
    with gevent.Timeout(5):
        while streams.full:
            gevent.sleep(0.01)
    assert stream.closed
    streams.stop()


def test_a_failure_while_adopting_closes_the_socket_and_releases_the_subscription(streams, hub):
    class Broken(Subscription):
        __slots__ = ()

        def attach(self, sink):
            raise RuntimeError("injected")

    sub = Broken(1, None)
    ours, theirs = socket.socketpair()
    peer = Peer(theirs)
    with pytest.raises(RuntimeError):
        streams.adopt(sub, ours.detach(), Unseen(0), b"retry: 3000\n\n")
    assert peer.at_eof(), "the browser sees the connection close"
    gevent.sleep(0)  # housekeeping releases the subscription
    assert hub.released == [sub]
    assert len(streams) == 0


def test_the_per_user_cap_counts_streams_in_redis_and_frees_a_closed_ones_lease(hub, store):
    import fakeredis

    from flask_tidings.caps import StreamCap

    client = fakeredis.FakeRedis()
    cap, other_host = StreamCap(client, limit=2), StreamCap(client, limit=2)
    streams = Streams(hub, store.read, heartbeat=60, cap=cap)
    try:
        first = cap.acquire(1)
        stream, peer = open_stream_with_lease(streams, Subscription(1, None), first)
        assert other_host.acquire(1) is not None, "a second stream, on another host"
        assert cap.acquire(1) is None and other_host.acquire(1) is None, "the cap holds everywhere"
        assert cap.acquire(2) is not None, "other users are not affected"
        stream.close()
        gevent.sleep(0)  # housekeeping releases the lease
        assert other_host.acquire(1) is not None
    finally:
        streams.stop()


def test_a_burst_of_connects_is_capped_exactly_in_few_round_trips():
    import fakeredis

    from flask_tidings.caps import StreamCap

    client = fakeredis.FakeRedis()
    cap = StreamCap(client, limit=4)
    assert cap.acquire(9) is not None  # Redis learns the script
    trips = []  # one per command sent alone, one per pipeline
    for name in ("pipeline", "execute_command"):
        real = getattr(client, name)
        setattr(client, name, lambda *a, real=real, **kw: trips.append(1) or real(*a, **kw))
    burst = [gevent.spawn(cap.acquire, user) for user in (1,) * 10 + (2,) * 3]
    gevent.joinall(burst)
    granted = [g.value is not None for g in burst]
    assert sum(granted[:10]) == 4 and all(granted[10:]), "user 1 gets its cap, user 2 is not affected"
    assert len(trips) <= 2, f"{len(trips)} round trips for 13 connects arriving together"
    client.script_flush()  # a restarted Redis has forgotten the script
    assert cap.acquire(3) is not None


def test_without_redis_the_cap_lets_streams_through_and_says_so_once(caplog):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from flask_tidings.caps import StreamCap

    # As the app's client: no retries. Nothing listens on port 1.
    client = redis.Redis(port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    cap = StreamCap(client, limit=4)
    burst = [gevent.spawn(cap.acquire, 1) for _ in range(5)]
    gevent.joinall(burst)
    assert all(g.value is not None for g in burst)
    assert len([r for r in caplog.records if "stream cap" in r.getMessage()]) == 1


def test_a_dead_workers_leases_expire(hub):
    import fakeredis

    from flask_tidings.caps import StreamCap

    client = fakeredis.FakeRedis()
    dead = StreamCap(client, limit=1, lease_seconds=0.2)
    assert dead.acquire(1) is not None
    alive = StreamCap(client, limit=1, lease_seconds=0.2)
    assert alive.acquire(1) is None
    gevent.sleep(0.3)  # the dead worker never renewed
    assert alive.acquire(1) is not None


def open_stream_with_lease(streams: Streams, sub: Subscription, lease: str):
    ours, theirs = socket.socketpair()
    stream = streams.adopt(sub, ours.detach(), Unseen(0), b"retry: 3000\n\n", lease)
    return stream, Peer(theirs)


def test_draining_spreads_the_reconnects_with_a_retry_each_then_closes(hub, store):
    opened = []

    class ShuttingHub(FakeHub):
        def shutdown(self):  # as the real hub does: close every subscription's stream
            for stream in opened:
                stream.close()

    streams = Streams(ShuttingHub(), store.read, heartbeat=60, drain_retry_ms=10_000)
    try:
        peers = []
        for i in range(30):
            stream, peer = open_stream(streams, Subscription(i, None))
            opened.append(stream)
            peers.append(peer)
        for peer in peers:
            peer.frames(1)  # the head's retry: 3000
        streams.drain()
        retries = set()
        for peer in peers:
            (frame,) = peer.frames(1)
            assert frame.startswith(b"retry: ")
            retries.add(int(frame[7:]))
            assert peer.at_eof()
        assert all(500 <= r <= 10_000 for r in retries) and len(retries) > 20, "spread out"
    finally:
        streams.stop()


def test_renewed_leases_outlive_their_first_term():
    import fakeredis

    from flask_tidings.caps import StreamCap

    cap = StreamCap(fakeredis.FakeRedis(), limit=2, lease_seconds=0.3)
    leases = [(1, cap.acquire(1)), (1, cap.acquire(1))]
    for _ in range(3):
        gevent.sleep(0.15)
        cap.renew(leases, batch=1)
    assert cap.acquire(1) is None, "both streams still count"


def test_a_worker_vouches_for_its_users_and_a_looking_tab_that_goes_takes_its_looking_along(hub, store):
    from flask_tidings.presence import MemoryPresence

    presence = MemoryPresence(interval=0.05)
    streams = Streams(hub, store.read, heartbeat=60, presence=presence)
    try:
        looking, other = Subscription(1, "phone"), Subscription(2, "laptop")
        _, phone = open_stream(streams, looking)
        open_stream(streams, other)
        looking.set_looking(True)  # the control message, as Fanout.dispatch delivers it

        def state():  # presence names users as the engine does: by str(id)
            return presence.of(["1", "2"])

        with gevent.Timeout(5):
            while not (state()["1"].looking and state()["2"].online):
                gevent.sleep(0.01)
        assert not state()["2"].looking
        phone.sock.close()  # the looking tab's browser is gone (no goodbye)
        with gevent.Timeout(5):
            while state()["1"].looking:
                gevent.sleep(0.01)
    finally:
        streams.stop()
