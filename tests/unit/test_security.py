"""Security headers, private pages not cached, Secure cookies in production, ops endpoints."""

from __future__ import annotations

import re

import pytest

from tests.conftest import build_app, dispose

# (path, whether it is seen logged in)
PAGES = [("/", False), ("/auth/login", False), ("/auth/register", False)] + [
    (path, True) for path in ("/", "/users", "/messages", "/user/alice", "/messages/bob")
]


@pytest.fixture(params=PAGES, ids=[f"{p}{' (logged in)' if i else ''}" for p, i in PAGES])
def page(request, auth, client):
    """(client, path): a page as the visitor it is for sees it."""
    path, logged_in = request.param
    auth.create("alice")
    auth.create("bob")
    if logged_in:
        auth.login("alice")
    return client, path


def test_every_page_carries_the_security_headers_and_is_not_stored(page):
    client, path = page
    r = client.get(path)
    assert r.status_code == 200
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "style-src 'self'" in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert r.headers["Cache-Control"] == "no-store"


def test_pages_carry_no_inline_script_or_style(page):
    client, path = page
    html = client.get(path).get_data(as_text=True)
    # A JSON data block (the page's texts) is never run, so the CSP has nothing to say of it.
    inline_script = re.search(r"<script(?![^>]*\b(src=|type=\"application/json\"))[^>]*>", html)
    assert not inline_script, "an inline <script> would be blocked by the CSP"
    assert " style=" not in html, "an inline style attribute would be blocked by the CSP"


def test_static_files_may_be_cached(client):
    r = client.get("/tidings/static/tidings.js")
    assert r.status_code == 200
    assert r.headers.get("Cache-Control") != "no-store"


def test_cookies_are_plain_outside_production(auth, client):
    auth.create("alice")
    r = auth.login("alice", remember_me="y")
    cookies = r.headers.getlist("Set-Cookie")
    assert cookies and not any("Secure" in c for c in cookies)


def test_production_makes_session_and_remember_me_cookies_secure(config, fake_redis, monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "production-secret")
    monkeypatch.setenv("PUBLIC_URL", "https://tidings.example")
    app = build_app({k: v for k, v in config.items() if k != "SECRET_KEY"}, fake_redis)
    try:
        from tests.conftest import AuthActions

        client = app.test_client()
        auth = AuthActions(app, client)
        auth.create("alice")
        r = auth.login("alice", remember_me="y")
        cookies = {c.split("=", 1)[0]: c for c in r.headers.getlist("Set-Cookie")}
        assert "Secure" in cookies["session"] and "HttpOnly" in cookies["session"]
        assert "Secure" in cookies["remember_token"]
    finally:
        dispose(app)


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json == {"status": "ok"}


def test_readyz_names_what_is_missing(client):
    # In-process there is no gevent: the hub cannot run, and /readyz says so.
    r = client.get("/readyz")
    assert r.status_code == 503
    assert "hub:" in r.json["error"] and "gevent" in r.json["error"]


def test_metrics_are_served_to_localhost_only_unless_a_token_is_given(app, client):
    r = client.get("/metrics")
    assert r.status_code == 200
    assert "tidings_streams_open" in r.get_data(as_text=True)
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.7"}).status_code == 403
    assert client.get("/metrics", headers={"X-Forwarded-For": "192.0.2.7"}).status_code == 403
    app.config["METRICS_TOKEN"] = "s3cret"
    remote = {"REMOTE_ADDR": "192.0.2.7"}

    def read(token: str) -> int:
        bearer = {"Authorization": f"Bearer {token}"}
        return client.get("/metrics", environ_base=remote, headers=bearer).status_code

    assert read("s3cret") == 200
    assert read("nope") == 403


def test_readyz_tells_strangers_only_that_it_is_not_ready(client):
    stranger = client.get("/readyz", environ_base={"REMOTE_ADDR": "192.0.2.7"})
    assert stranger.status_code == 503 and stranger.json == {"error": "not ready"}
    relayed = client.get("/readyz", headers={"X-Forwarded-For": "192.0.2.7"})
    assert relayed.json == {"error": "not ready"}


def test_in_production_metrics_and_readiness_reasons_need_the_token(app, client):
    app.config.update(APP_ENV="production", METRICS_TOKEN="s3cret")
    assert client.get("/metrics").status_code == 403, "localhost may be a tunnel: the token is needed"
    assert client.get("/readyz").json == {"error": "not ready"}
    bearer = {"Authorization": "Bearer s3cret"}
    assert client.get("/metrics", headers=bearer).status_code == 200
    assert "hub:" in client.get("/readyz", headers=bearer).json["error"]


def test_production_refuses_to_start_without_a_public_url_for_links_in_mails(config, fake_redis, monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("SECRET_KEY", "production-secret")
    monkeypatch.delenv("PUBLIC_URL", raising=False)
    with pytest.raises(RuntimeError, match="PUBLIC_URL must be set"):
        build_app({k: v for k, v in config.items() if k != "SECRET_KEY"}, fake_redis)
