"""Abuse on real servers: hostile channel messages, the per-user cap and rate limits shared by
workers and hosts through Redis, and cookies that stop working at logout."""

from __future__ import annotations

import json

import httpx
import pytest
import redis

from harness.clients import WebUser, registered, user_id
from harness.servers import LiveServer, wait_until

HOSTILE = [
    b'{"name":"announcement","data":1e999}',
    b'{"name":"announcement","data":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"name":"announcement","data":"' + b"x" * 1_000_000 + b'"}',
    b'{"name":"announcement","data":"\xff\xfe\xfd"}',
    b"[1, 2, 3]",
    b"not json at all",
]


def test_hostile_messages_leave_delivery_running_in_both_workers(make_user, server, server_env, redis_url):
    bob = make_user("hostile")
    uid = user_id(server_env, bob.username)
    r = redis.Redis.from_url(redis_url)
    channel = f"notifications:{uid}"
    streams = []
    # Open streams until both workers hold one of bob's (each subscribes the channel once).
    for _ in range(40):
        s = bob.stream()
        assert s.status == 200 and s.next_block().retry == "500"
        streams.append(s)
        if dict(r.pubsub_numsub(channel))[channel.encode()] == 2:
            break
    assert dict(r.pubsub_numsub(channel))[channel.encode()] == 2, "bob has streams in both workers"
    for payload in HOSTILE:
        r.publish(channel, payload)
    r.publish(channel, json.dumps({"name": "announcement", "data": "still here"}))
    for s in streams:
        assert s.next_event("announcement").json["data"] == "still here"
        s.close()


@pytest.fixture
def two_hosts(sqlite_env, tmp_path):
    """Two gunicorn masters on one database and Redis, tight caps and limits."""
    env = {
        **sqlite_env,
        "MAX_STREAMS_PER_USER": "3",
        "RATELIMIT_ENABLED": "1",
        "LOGIN_FREE_FAILURES": "2",
        "LOGIN_MAX_DELAY_SECONDS": "30",
        "LOGIN_RATE_PER_ADDRESS": "1000 per minute",
        "REGISTER_RATE": "1000 per hour",
    }
    hosts = [LiveServer(env, tmp_path / f"host{i}.log").start() for i in (1, 2)]
    yield hosts
    for host in hosts:
        host.stop()


def test_the_per_user_stream_cap_holds_across_hosts_while_others_connect(two_hosts, redis_url):
    a, b = two_hosts
    bob = registered(a.url, f"capped{a.port}")
    alice = registered(a.url, f"other{a.port}")

    def on(host: LiveServer, user: WebUser, **kwargs):
        user.base_url = host.url
        return user.stream(**kwargs)

    held = [on(a, bob), on(a, bob), on(b, bob)]
    assert all(s.status == 200 for s in held)
    refused = on(b, bob)
    assert refused.status == 429 and int(refused.headers["retry-after"]) > 0
    assert "streams open already" in json.loads(refused.rest())["error"]
    refused.close()
    assert on(a, alice).status == 200, "another user still connects"
    assert on(b, alice).status == 200

    held.pop().close()
    wait_until(lambda: _opens(on(b, bob)), 5, "bob's freed slot")


def _opens(stream) -> bool:
    ok = stream.status == 200
    stream.close()
    return ok


def test_failed_logins_are_counted_across_hosts_and_never_stop_a_known_browser(two_hosts):
    a, b = two_hosts
    victim = WebUser(a.url, f"victim{a.port}")
    assert victim.register().status_code == 302  # registering logs in: this browser is known
    guesses = []
    for host in (a, b):
        guesser = WebUser(host.url, victim.username, password="wrong guess")
        r = guesser.post_form("/auth/login", {"username": victim.username, "password": "wrong guess"})
        guesses.append(r.status_code)
    assert guesses == [200, 200]
    # Two failures from this address, on two hosts: a new browser here must now wait.
    stranger = WebUser(b.url, victim.username).post_form(
        "/auth/login", {"username": victim.username, "password": victim.password}
    )
    assert stranger.status_code == 429 and "Too many failed logins for this account" in stranger.text
    assert 0 < int(stranger.headers["retry-after"]) <= 30
    assert "x-ratelimit-remaining" not in {k.lower() for k in stranger.headers}
    # The victim's own browser, on the other host, gets in at once.
    victim.http.base_url = b.url
    victim.base_url = b.url
    assert victim.logout().status_code == 302
    victim.login()


def test_a_copied_cookie_stops_working_at_logout_on_every_host(two_hosts):
    a, b = two_hosts
    bob = registered(a.url, f"copied{a.port}")
    stolen = dict(bob.http.cookies)
    thief = httpx.Client(base_url=b.url, cookies=stolen)
    assert thief.get("/messages").status_code == 200
    assert bob.logout().status_code == 302
    assert thief.get("/messages").status_code == 302
    assert thief.get("/stream").status_code == 401
    thief.close()
