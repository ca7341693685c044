"""Tidings' worker class under real deployment knobs: middleware, max_requests, TLS, failures."""

from __future__ import annotations

import subprocess

import httpx
import pytest
import redis

from harness.clients import SSE, WebUser, registered, user_id
from harness.servers import BIN, ROOT, LiveServer, free_port, make_certificate, wait_until
from harness.tools import OPENSSL
from tests.conftest import need


def users(url: str, *names: str) -> list[WebUser]:
    """Fresh users registered and logged in through the forms of the server at ``url``."""
    made = []
    for name in names:
        made.append(registered(url, name))
    return made


def subscribers(redis_url: str, uid: int) -> int:
    channel = f"notifications:{uid}"
    return dict(redis.Redis.from_url(redis_url).pubsub_numsub(channel))[channel.encode()]


def opened(user: WebUser, **kwargs) -> SSE:
    """A stream past its ``retry:`` line."""
    s = user.stream(**kwargs)
    assert s.status == 200, s.status
    assert s.next_block().retry == "500"
    return s


@pytest.mark.parametrize(
    "entry_point",
    ["tests.apps.sentry:app", "tests.apps.otel:app", "tests.apps.middleware:wrapped"],
    ids=["sentry-sdk", "opentelemetry", "closing-iterator"],
)
def test_streams_work_behind_middleware_that_wraps_the_response(sqlite_env, tmp_path, entry_point):
    live = LiveServer(sqlite_env, tmp_path / "gunicorn.log", app=entry_point).start()
    try:
        alice, bob = users(live.url, f"mw_a_{tmp_path.name[-6:]}", f"mw_b_{tmp_path.name[-6:]}")
        s = opened(bob)
        assert alice.send(bob.username, "through the middleware").status_code == 302
        assert s.next_event("unread_message_count").json["data"] == 1
        # The connection is the stream's alone: the page requests around it are unaffected.
        assert bob.http.get(f"/messages/{alice.username}").status_code == 200
        assert s.next_event("unread_message_count").json["data"] == 0
        s.close()
        for user in (alice, bob):
            user.close()
    finally:
        live.stop()


def test_streams_do_not_count_toward_max_requests_and_are_drained_when_it_fires(sqlite_env, tmp_path):
    # Users made on an ordinary server; their cookies work on the second one (same SECRET_KEY).
    setup = LiveServer(sqlite_env, tmp_path / "setup.log").start()
    try:
        alice, bob = users(setup.url, "maxreq_a", "maxreq_b")
    finally:
        setup.stop()
    env = {**sqlite_env, "WEB_CONCURRENCY": "1"}
    live = LiveServer(env, tmp_path / "gunicorn.log", "--max-requests", "5", "--max-requests-jitter", "0")
    live.start()  # its readiness probe is request 1
    try:
        for user in (alice, bob):
            user.http.close()
            user.base_url = live.url
            user.http = httpx.Client(base_url=live.url, timeout=10, cookies=user.http.cookies)
        (worker,) = live.workers()
        streams = [opened(bob) for _ in range(8)]  # more streams than the limit: none is counted
        assert alice.send(bob.username, "one").status_code == 302  # requests 2 and 3
        last = None
        for s in streams:
            assert s.next_event("unread_message_count").json["data"] == 1
            last = s.next_event("conversation")
        assert live.workers() == [worker]

        assert alice.http.get("/").status_code == 200  # request 4
        assert alice.http.get("/").status_code == 200  # request 5: the worker restarts after it
        for s in streams:  # the stopping worker closes every stream (keepalives at most before)
            while (block := s.next_block()) is not None:
                assert block.event is None, block
        wait_until(lambda: live.workers() and live.workers() != [worker], 20, "the worker to be replaced")
        assert "Autorestarting worker after 5 requests" in live.log()

        assert alice.send(bob.username, "two").status_code == 302
        resumed = opened(bob, headers={"Last-Event-ID": last.id})
        assert resumed.next_event("unread_message_count").json["data"] == 2
        resumed.close()
    finally:
        live.stop()


def test_with_two_workers_a_max_requests_restart_carries_the_streams_to_the_sibling(sqlite_env, tmp_path):
    env = {**sqlite_env, "WEB_CONCURRENCY": "2"}
    live = LiveServer(env, tmp_path / "gunicorn.log", "--max-requests", "30", "--max-requests-jitter", "0")
    live.start()
    try:
        alice, bob = users(live.url, "sibling_a", "sibling_b")
        first = set(live.workers())
        # Streams on both workers, so that whichever restarts has some to carry.
        streams, holders = [], set()
        while len(streams) < 8 or len(holders) < 2:
            assert len(streams) < 40, "forty streams, all accepted by one worker"
            streams.append(opened(bob))
            holders.add(live.worker_of(streams[-1].sock))
            holders.discard(None)
        while "Autorestarting worker" not in live.log():
            assert alice.http.get("/").status_code == 200
        wait_until(lambda: set(live.workers()) - first, 20, "a new worker in place of the restarted one")
        assert alice.send(bob.username, "after the restart").status_code == 302
        for s in streams:  # the same connections: nothing closed, nothing replayed twice
            assert s.next_event("unread_message_count").json["data"] == 1
            assert s.next_event("new_message").json["data"]["preview"] == "after the restart"
        assert "carried " in live.log()
        for s in streams:
            s.close()
    finally:
        live.stop()


def test_a_failure_right_after_the_hand_over_releases_the_socket_and_subscription(
    sqlite_env, tmp_path, redis_url, expect_log
):
    expect_log(r"a request failed after taking its connection over; closing it")
    env = {**sqlite_env, "WEB_CONCURRENCY": "1"}
    live = LiveServer(env, tmp_path / "gunicorn.log", app="tests.apps.middleware:failing").start()
    try:
        (bob,) = users(live.url, "failing_b")
        uid = user_id(env, bob.username)
        (worker,) = live.workers()

        def attempt() -> None:
            s = bob.stream()
            while s.next_block() is not None:  # whatever was written, then the close
                pass
            s.close()

        attempt()
        wait_until(lambda: subscribers(redis_url, uid) == 0, 5, "the subscription to be released")
        baseline = worker.num_fds()
        for _ in range(20):
            attempt()
        wait_until(lambda: subscribers(redis_url, uid) == 0, 5, "every subscription to be released")
        wait_until(lambda: worker.num_fds() <= baseline, 5, f"the worker's descriptors back to {baseline}")
        assert bob.http.get("/").status_code == 200  # and the worker goes on serving
    finally:
        live.stop()


def test_tls_at_gunicorn_is_refused_at_boot_pointing_at_the_proxy(sqlite_env, tmp_path):
    import os

    need(OPENSSL)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    make_certificate(cert, key)
    env = {**os.environ, **sqlite_env, "PORT": str(free_port())}
    proc = subprocess.run(
        [BIN / "gunicorn", "-c", "gunicorn.conf.py", "--certfile", cert, "--keyfile", key, "wsgi:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0  # 3 (boot error), or 1 when the arbiter halts from its signal handler
    assert "Tidings does not serve TLS from gunicorn" in proc.stderr
    assert "Terminate TLS at the proxy" in proc.stderr
