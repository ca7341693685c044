"""Rate limits: 429 with Retry-After, as a form error on pages and JSON for script clients."""

from __future__ import annotations

import pytest

JSON = {"Accept": "application/json"}


@pytest.fixture
def limits(config):
    """Tight limits for the test; ``config`` is read when the app is made."""
    config.update(
        LOGIN_RATE_PER_ADDRESS="5 per minute",
        REGISTER_RATE="2 per hour",
        SEND_RATE="2 per minute",
        STREAM_RATE="2 per minute",
        EXPORT_RATE="1 per hour",
    )
    return config


def assert_retry_after(r) -> None:
    assert r.status_code == 429
    assert 0 < int(r.headers["Retry-After"]) <= 3600


def test_login_per_address_counts_every_account(limits, auth, client):
    for name in ("a1", "a2", "a3", "a4", "a5"):
        auth.login(name, password="wrong")
    r = auth.login("a6", password="wrong")
    assert_retry_after(r)
    assert b"Too many login attempts" in r.data


def test_registrations_per_address(limits, client):
    def register(name):
        pw = "long-enough-pw"
        return client.post(
            "/auth/register",
            data={"username": name, "email": f"{name}@x.org", "password": pw, "password2": pw},
        )

    assert register("one").status_code == 302 and register("two").status_code == 302
    r = register("three")
    assert_retry_after(r)
    assert b"Too many registrations" in r.data


def test_sends_per_user_as_a_form_error_and_as_json(limits, auth, client):
    auth.create("alice")
    auth.create("bob")
    auth.login("alice")
    for i in range(2):
        assert client.post("/send_message/bob", data={"message": f"hi {i}"}).status_code == 302
    page = client.post("/send_message/bob", data={"message": "one too many"})
    assert_retry_after(page)
    assert b"Too many messages" in page.data and b'name="message"' in page.data
    script = client.post("/send_message/bob", data={"message": "again"}, headers=JSON)
    assert_retry_after(script)
    assert "error" in script.get_json()


def test_stream_opens_per_user_are_json(limits, auth, client):
    auth.create("alice")
    auth.login("alice")
    for _ in range(2):
        assert client.get("/stream").status_code != 429
    r = client.get("/stream")
    assert_retry_after(r)
    assert r.get_json()["error"]


def test_export_starts_per_user(limits, auth, client):
    auth.create("alice")
    auth.login("alice")
    client.post("/export_messages", headers=JSON)
    r = client.post("/export_messages", headers=JSON)
    assert_retry_after(r)
    assert "exports" in r.get_json()["error"]


@pytest.fixture
def limits_off(limits):
    limits["RATELIMIT_ENABLED"] = False


def test_ratelimit_enabled_0_turns_every_limit_off(limits_off, auth, client):
    auth.create("alice")
    for _ in range(10):
        assert auth.login("alice", password="wrong").status_code == 200
