"""Through a real nginx (deploy/nginx/tidings.conf): TLS + HTTP/2, unbuffered streams, slow
bodies held by nginx, headers, readiness and metrics."""

from __future__ import annotations

import json
import os
import ssl
import subprocess

import httpx
import pytest
import redis

from harness.clients import WebUser, csrf_token, registered, slow_bodies, user_id
from harness.servers import BIN, ROOT, LiveServer, NginxServer, RedisServer, free_port, wait_until
from harness.tools import NGINX, OPENSSL
from tests.conftest import need

_names = iter(range(10**6))


def user(url: str, prefix: str, **options) -> WebUser:
    """A fresh user, registered and logged in at ``url``."""
    return registered(url, f"{prefix}{next(_names)}", **options)


def h2_user(nginx: NginxServer, prefix: str) -> WebUser:
    return user(nginx.url, prefix, http2=True, verify=False)


def read_event(lines, name: str) -> dict:
    """The data of the next SSE event called ``name`` from an iterator of lines."""
    for line in lines:
        if line == f"event: {name}":
            return json.loads(next(lines).removeprefix("data: "))
    raise AssertionError("the stream ended")


def test_a_stream_over_tls_and_http2_gets_its_events(proxied):
    web, nginx = proxied
    alice, bob = h2_user(nginx, "h2a"), h2_user(nginx, "h2b")
    with bob.http.stream("GET", "/stream", headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200 and r.http_version == "HTTP/2"
        assert r.headers["content-type"].startswith("text/event-stream")
        assert "strict-transport-security" in r.headers
        lines = r.iter_lines()
        assert next(lines) == "retry: 500"
        assert alice.send(bob.username, "over HTTP/2").status_code == 302
        assert read_event(lines, "unread_message_count")["data"] == 1
        assert read_event(lines, "new_message")["data"]["preview"] == "over HTTP/2"
    assert alice.http.get("/auth/login").http_version == "HTTP/2"


def test_events_pass_nginx_unbuffered_one_by_one(proxied, redis_url):
    web, nginx = proxied
    bob = h2_user(nginx, "unbuf")
    uid = user_id(web.env, bob.username)
    r = redis.Redis.from_url(redis_url)
    with bob.http.stream("GET", "/stream") as resp:
        lines = resp.iter_lines()
        assert next(lines) == "retry: 500"
        for i in range(20):
            # Each event must arrive before the next is published: a buffering proxy would hold
            # these small frames back until its buffer filled or the stream ended.
            r.publish(f"notifications:{uid}", json.dumps({"name": "announcement", "data": i}))
            assert read_event(lines, "announcement")["data"] == i


def test_pages_through_nginx_carry_hsts_and_the_apps_headers_and_static_files_come_from_nginx(proxied):
    web, nginx = proxied
    client = httpx.Client(base_url=nginx.url, http2=True, verify=False)
    page = client.get("/auth/login")
    assert page.headers["strict-transport-security"].startswith("max-age=")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    for path in ("/static/js/site.js", "/tidings/static/tidings.js"):
        static = client.get(path)
        assert static.status_code == 200 and "expires" in static.headers
        assert path not in web.log(), "nginx serves static files itself"
    assert client.get("/metrics").status_code == 404, "metrics are not public"
    client.close()


def test_the_app_knows_the_browser_speaks_https_through_the_proxy(proxied):
    # ProxyFix trusts nginx's X-Forwarded-Proto, so Flask-WTF applies its HTTPS rule: a form
    # posted without this site as its Referer is refused (a browser always sends it).
    from harness.clients import csrf_token

    web, nginx = proxied
    client = httpx.Client(base_url=nginx.url, http2=True, verify=False)
    token = csrf_token(client.get("/auth/login").text)
    form = {"csrf_token": token, "username": "nobody", "password": "x"}
    refused = client.post("/auth/login", data=form)
    assert refused.status_code == 400 and "not sent from this site" in refused.text
    allowed = client.post("/auth/login", data=form, headers={"Referer": f"{nginx.url}/auth/login"})
    assert allowed.status_code == 200 and "Invalid username or password" in allowed.text
    client.close()


def test_nginx_holds_slow_request_bodies_so_pages_stay_up(sqlite_env, tmp_path):
    # One worker serving 20 requests at once: 40 slow bodies fill it when it is served directly.
    need(NGINX, OPENSSL)
    env = {**sqlite_env, "TRUSTED_PROXIES": "1", "WEB_CONCURRENCY": "1", "WORKER_CONNECTIONS": "20"}
    web = LiveServer(env, tmp_path / "gunicorn.log").start()
    nginx = NginxServer(tmp_path / "nginx", [f"127.0.0.1:{web.port}"]).start()
    try:
        direct = slow_bodies(web.port, 40)
        with pytest.raises(httpx.TimeoutException):
            httpx.get(web.url + "/", timeout=3)  # the attack works against gunicorn alone
        for s in direct:
            s.close()
        wait_until(lambda: _answers(web.url + "/"), 15, "gunicorn to recover once the sockets close")

        held = slow_bodies(nginx.port, 40, tls=True)
        try:
            assert httpx.get(nginx.url + "/", verify=False, timeout=3).status_code == 200
            for s in held:  # nginx still holds them: they are waiting for their bodies, not refused
                s.setblocking(False)
                with pytest.raises(ssl.SSLWantReadError):
                    s.recv(1)
        finally:
            for s in held:
                s.close()
    finally:
        nginx.stop()
        web.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_readyz_is_503_while_redis_is_stopped_and_200_after_it_returns(sqlite_env, tmp_path):
    own_redis = RedisServer(tmp_path).start()
    env = {**sqlite_env, "REDIS_URL": own_redis.url, "WEB_CONCURRENCY": "1"}
    web = LiveServer(env, tmp_path / "gunicorn.log").start()
    try:
        assert web.get("/readyz").status_code == 200
        assert web.get("/healthz").status_code == 200
        own_redis.kill()
        down = wait_until(lambda: _status(web, "/readyz", 503), 10, "/readyz to report Redis gone")
        assert "redis" in down.json()["error"]
        assert web.get("/healthz").status_code == 200, "alive, just not ready"
        own_redis.start()
        wait_until(lambda: _status(web, "/readyz", 200), 15, "/readyz to recover with Redis")
    finally:
        web.stop()
        own_redis.kill()


def _status(web: LiveServer, path: str, status: int) -> httpx.Response | None:
    r = web.get(path)
    return r if r.status_code == status else None


def test_metrics_count_an_open_stream_and_a_delivery(sqlite_env, tmp_path):
    web = LiveServer(sqlite_env, tmp_path / "gunicorn.log").start()
    try:
        _count_a_stream_and_a_delivery(web)
    finally:
        web.stop()


def _count_a_stream_and_a_delivery(web: LiveServer) -> None:
    alice, bob = user(web.url, "ma"), user(web.url, "mb")

    def value(name: str) -> float:
        text = web.get("/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))

    assert value("tidings_streams_open") == 0 and value("tidings_deliveries_total") == 0
    s = bob.stream()
    assert s.next_block().retry == "500"
    assert value("tidings_streams_open") == 1
    assert value("tidings_channels_subscribed") == 1
    assert alice.send(bob.username, "counted").status_code == 302
    assert s.next_event("unread_message_count").json["data"] == 1
    assert s.next_event("conversation").json["data"]["with"] == alice.username
    assert value("tidings_deliveries_total") == 3  # the count, the toast and the conversation's row
    assert "tidings_commit_to_publish_seconds_bucket" in web.get("/metrics").text
    s.close()
    wait_until(lambda: value("tidings_streams_open") == 0, 5, "the closed stream to be uncounted")
    assert value("tidings_channels_subscribed") == 0


def forged_logins(url: str, count: int, **options) -> list[int]:
    """``count`` failed logins, each claiming another address in X-Forwarded-For; the statuses."""
    guesser = WebUser(url, "nobody", **options)
    statuses = []
    for i in range(count):
        page = guesser.http.get("/auth/login")
        form = {"csrf_token": csrf_token(page.text), "username": f"nobody{i}", "password": "wrong"}
        forged = {"X-Forwarded-For": f"198.51.100.{i + 1}", "Referer": f"{url}/auth/login"}
        statuses.append(guesser.http.post("/auth/login", data=form, headers=forged).status_code)
    guesser.close()
    return statuses


LIMITED = {"RATELIMIT_ENABLED": "1", "LOGIN_RATE_PER_ADDRESS": "3 per minute", "TRUSTED_PROXIES": "1"}


def limited(sqlite_env: dict, tmp_path) -> tuple[RedisServer, dict]:
    """A Redis of its own (the limits count there, from nothing) and the env of a limited server."""
    own_redis = RedisServer(tmp_path).start()
    return own_redis, {**sqlite_env, **LIMITED, "REDIS_URL": own_redis.url}


def test_behind_nginx_a_forged_x_forwarded_for_changes_nothing(sqlite_env, tmp_path):
    need(NGINX, OPENSSL)
    own_redis, env = limited(sqlite_env, tmp_path)
    web = LiveServer(env, tmp_path / "gunicorn.log").start()
    nginx = NginxServer(tmp_path / "nginx", [f"127.0.0.1:{web.port}"]).start()
    try:
        # Every attempt counts against the one real address: the fourth is over the limit.
        assert forged_logins(nginx.url, 4, http2=True, verify=False) == [200, 200, 200, 429]
    finally:
        nginx.stop()
        web.stop()
        own_redis.kill()


def test_forwarded_headers_from_an_address_not_on_the_allow_list_are_ignored(sqlite_env, tmp_path):
    own_redis, env = limited(sqlite_env, tmp_path)
    env["TRUSTED_PROXY_ADDRS"] = "192.0.2.10"  # the proxy is elsewhere: this client is not it
    web = LiveServer(env, tmp_path / "gunicorn.log").start()
    try:
        assert forged_logins(web.url, 4) == [200, 200, 200, 429]
    finally:
        web.stop()
        own_redis.kill()


def test_proxy_trust_on_an_address_others_reach_without_an_allow_list_does_not_start(sqlite_env):
    env = {**os.environ, **sqlite_env, "TRUSTED_PROXIES": "1", "BIND": f"0.0.0.0:{free_port()}"}
    env.pop("TRUSTED_PROXY_ADDRS", None)
    proc = subprocess.run(
        [BIN / "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "not starting: TRUSTED_PROXIES is set and gunicorn listens on 0.0.0.0" in proc.stderr
    assert "TRUSTED_PROXY_ADDRS" in proc.stderr
