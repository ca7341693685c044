"""Deploys and outages as browsers live them: a HUP carries each stream over (or, with carrying
off, cuts it once), and an outage stays readable.

The tabs here behave as EventSource does: they honour the server's ``retry:``, reconnect with
``Last-Event-ID`` and keep the last unread count they saw.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from harness.clients import Tab, WebUser, registered
from harness.servers import LiveServer, RedisServer, wait_until

CARRIED = re.compile(r"carried (\d+) streams to the workers succeeding this one in [\d.]+ s \((\d+) refused")
# A stream that lands on a stopping worker would wait for the hub's subscribe timeout, which
# logs "could not get a subscription confirmed" (flask_tidings/hub.py): each test checks the
# log for it. (A handshake's time also holds the new workers' boot, ~2 s on a slow machine.)
NO_CONFIRMATION = "get a subscription confirmed"


@pytest.fixture
def tabs():
    """Start tabs with ``open_tab(user)``; all are closed at the end."""
    stop = threading.Event()
    made: list[Tab] = []

    def open_tab(user: WebUser) -> Tab:
        tab = Tab(user, stop).start()
        made.append(tab)
        return tab

    yield open_tab
    stop.set()
    for tab in made:
        tab.close()
    for tab in made:
        tab.thread.join(5)


def two_tabs_each(server: LiveServer, prefix: str, tabs) -> tuple[list[WebUser], WebUser, list[Tab]]:
    """Ten users with two open tabs each, and a sender."""
    users = [registered(server.url, f"{prefix}{i}") for i in range(10)]
    sender = registered(server.url, f"{prefix}sender")
    steady = [tabs(u) for u in users for _ in range(2)]
    wait_until(lambda: all(t.open for t in steady), 20, "every tab connected")
    return users, sender, steady


@contextlib.contextmanager
def sending(sender: WebUser, users: list[WebUser]) -> Iterator[dict[str, int]]:
    """A message every 30 ms, to each user in turn, while the block runs; yields the counts sent."""
    sent = dict.fromkeys((u.username for u in users), 0)
    stop = threading.Event()

    def traffic() -> None:
        n = 0
        while not stop.is_set():
            user = users[n % len(users)]
            assert sender.send(user.username, f"m{n}").status_code == 302
            sent[user.username] += 1
            n += 1
            time.sleep(0.03)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        stop.set()
        thread.join(10)


def at_the_truth_and_nothing_twice(steady: list[Tab], sent: dict[str, int]) -> None:
    """Every tab shows its user's messages, and no connection got an id twice or a stale one."""
    for tab in steady:
        wait_until(lambda tab=tab: tab.count == sent[tab.user.username], 20, "badges at the truth")
        for conn in tab.connections:
            seen: dict[str, int] = {}
            for key, event_id in conn.keys:
                assert event_id > seen.get(key, 0), f"{key} {event_id} sent twice or out of order"
                seen[key] = event_id


@contextlib.contextmanager
def two_workers(env: dict[str, str], logs) -> Iterator[LiveServer]:
    """gunicorn with its two workers, logging to ``logs``, stopped at the end."""
    live = LiveServer(env, logs / "gunicorn.log").start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def carrying_server(sqlite_env, tmp_path_factory):
    """Two workers that carry their streams to their successors (the default)."""
    with two_workers(sqlite_env, tmp_path_factory.mktemp("carrying")) as live:
        yield live


def test_every_hup_carries_each_stream_to_the_new_workers_with_nothing_lost_or_repeated(
    carrying_server, tabs
):
    server = carrying_server
    users, sender, steady = two_tabs_each(server, "carried", tabs)

    with sending(sender, users) as sent:
        for repeat in range(5):
            old = server.live_worker_pids()
            server.proc.send_signal(signal.SIGHUP)
            # Fresh tabs keep opening while the old workers stop and the new ones boot.
            fresh = []
            while server.live_worker_pids() & old:
                fresh.append(tabs(users[len(fresh) % len(users)]))
                time.sleep(0.1)
                assert len(fresh) < 200, f"HUP {repeat}: the old workers never stopped"
            wait_until(lambda ts=fresh: all(t.open for t in ts), 20, "every fresh tab connected")
            for tab in fresh:
                assert all(status == 503 for status, _ in tab.refusals), f"HUP {repeat}: {tab.refusals}"
                tab.close()

    at_the_truth_and_nothing_twice(steady, sent)
    for tab in steady:
        # Never cut: the one connection it opened lived through five deploys.
        assert len(tab.connections) == 1 and tab.open, f"{tab.user.username}: cut by a deploy"
    log = server.log()
    carried = [int(n) for n, refused in CARRIED.findall(log) if refused == "0"]
    assert sum(carried) >= 5 * len(steady), "the old workers carried every steady tab, five times"
    assert len(carried) == len(CARRIED.findall(log)), "no successor refused a stream"
    assert NO_CONFIRMATION not in log


def test_deploys_half_a_second_apart_lose_nothing_and_repeat_nothing(carrying_server, tabs):
    server = carrying_server
    users, sender, steady = two_tabs_each(server, "twice", tabs)
    with sending(sender, users) as sent:
        for _ in range(3):
            before = server.live_worker_pids()
            server.proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)  # the new workers are booting, the old ones waiting for them
            server.proc.send_signal(signal.SIGHUP)
            wait_until(
                lambda before=before: (
                    len(server.live_worker_pids()) == 2 and not server.live_worker_pids() & before
                ),
                30,
                "two workers of the last deploy alone",
            )
            time.sleep(1)
    at_the_truth_and_nothing_twice(steady, sent)
    cuts = sum(len(t.connections) - 1 for t in steady)
    assert cuts <= 3 * len(steady), f"{cuts} cuts in three double deploys"
    assert NO_CONFIRMATION not in server.log()


@pytest.fixture(scope="module")
def deploy_server(sqlite_env, tmp_path_factory):
    """Two workers that do not carry their streams and drain with a short jittered retry:."""
    env = {**sqlite_env, "SSE_DRAIN_RETRY_MS": "1000", "SSE_HANDOFF_SECONDS": "0"}
    with two_workers(env, tmp_path_factory.mktemp("deploys")) as live:
        yield live


def test_without_carrying_every_hup_cuts_each_stream_once_and_none_lands_on_a_stopping_worker(
    deploy_server, tabs
):
    server = deploy_server
    users, sender, steady = two_tabs_each(server, "deploy", tabs)

    for repeat in range(10):
        old = {t: t.connections[-1] for t in steady}
        hup = time.monotonic()
        server.proc.send_signal(signal.SIGHUP)
        # New tabs keep opening while the old workers stop and the new ones boot.
        fresh: list[Tab] = []
        while not all(t.open and t.connections[-1] is not old[t] for t in steady):
            assert time.monotonic() - hup < 20, f"HUP {repeat}: not every tab came back"
            fresh.append(tabs(users[len(fresh) % len(users)]))
            time.sleep(0.1)
        wait_until(lambda ts=fresh: all(t.open for t in ts), 20, "every fresh tab connected")
        # The old workers' drain: the moment they stopped accepting, give or take a scheduling tick.
        stopped = min(c.closed for c in old.values())
        # A message after the deploy reaches both of the recipient's tabs.
        assert sender.send(users[repeat].username, f"after deploy {repeat}").status_code == 302
        recipient_tabs = [t for t in steady if t.user is users[repeat]]
        wait_until(
            lambda ts=recipient_tabs: all(t.count == 1 for t in ts), 10, "the message reached both tabs"
        )

        for tab in steady:
            new = tab.connections[tab.connections.index(old[tab]) + 1 :]
            # Cut once by the deploy; what it reconnected to is a new worker and stays open.
            assert len(new) == 1, (
                f"HUP {repeat}: a tab was cut again after reconnecting ({len(new)} connections)"
            )
        for tab in fresh:
            # Opened while the old workers still served, a fresh tab is cut once at their drain;
            # a stream opened after they stopped accepting never is.
            assert all(c.closed is None for c in tab.connections if c.opened > stopped + 0.2), f"HUP {repeat}"
            assert all(status == 503 for status, _ in tab.refusals), f"HUP {repeat}: {tab.refusals}"
            tab.close()
        # The recipient reads the message, so the next deploy starts from zero again.
        assert users[repeat].http.get(f"/messages/{sender.username}").status_code == 200
        wait_until(lambda ts=recipient_tabs: all(t.count == 0 for t in ts), 10, "the badge went back to 0")
    assert NO_CONFIRMATION not in server.log()


@pytest.fixture
def outage_server(sqlite_env, tmp_path):
    """Limits and the stream cap on, as in production, all on a Redis the test may stop."""
    (tmp_path / "redis").mkdir()
    own_redis = RedisServer(tmp_path / "redis").start()
    env = {
        **sqlite_env,
        "REDIS_URL": own_redis.url,
        "RATELIMIT_ENABLED": "1",
        "SEND_RATE": "10000 per minute",
        "STREAM_RATE": "10000 per minute",
        "LOGIN_RATE_PER_ADDRESS": "1000 per minute",
        "REGISTER_RATE": "1000 per hour",
        "MAX_STREAMS_PER_USER": "32",
    }
    live = LiveServer(env, tmp_path / "gunicorn.log").start()
    yield live, own_redis
    live.stop()
    own_redis.kill()


OUTAGE_SECONDS = 30.0


def test_a_30_s_redis_outage_under_traffic_logs_a_few_lines_per_10_s(outage_server, tabs):
    server, own_redis = outage_server
    users = [registered(server.url, f"outage{i}") for i in range(5)]
    sender = registered(server.url, "outagesender")
    steady = [tabs(u) for u in users for _ in range(2)]
    wait_until(lambda: all(t.open for t in steady), 20, "every tab connected")

    stop = threading.Event()
    sent = {u.username: 0 for u in users}

    def traffic() -> None:
        """A send every 50 ms, a page every 50 ms, a tab opened and closed every 200 ms."""
        n = 0
        while not stop.is_set():
            user = users[n % len(users)]
            assert sender.send(user.username, f"m{n}").status_code == 302
            sent[user.username] += 1
            assert users[(n + 1) % len(users)].http.get("/").status_code == 200
            if n % 4 == 0:
                tab = tabs(users[(n + 2) % len(users)])
                time.sleep(0.05)
                tab.close()
            n += 1
            time.sleep(0.05)

    log_before = len(server.log())
    worker = threading.Thread(target=traffic, daemon=True)
    worker.start()
    time.sleep(1)
    own_redis.kill()
    down = server.log()[log_before:]
    time.sleep(OUTAGE_SECONDS)
    during = server.log()[log_before + len(down) :]
    own_redis.start()
    time.sleep(2)
    stop.set()
    worker.join(10)

    lines = [line for line in during.splitlines() if line.strip()]
    windows = OUTAGE_SECONDS / 10
    assert len(lines) <= 8 * windows, "\n".join(lines[:40])
    # And the tabs converge to the truth once Redis is back, no id twice or out of order.
    at_the_truth_and_nothing_twice(steady, sent)
