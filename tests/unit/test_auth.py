"""Registering, logging in and out."""

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import User
from harness.clients import csrf_token


def test_register_creates_the_account_and_logs_it_in(client, app):
    r = client.post(
        "/auth/register",
        data={
            "username": "alice",
            "email": "Alice@Example.com",
            "password": "s3cret-pass",
            "password2": "s3cret-pass",
        },
    )
    assert r.status_code == 302 and r.headers["Location"] == "/"
    assert b"Hi, alice" in client.get("/").data
    with app.app_context():
        user = db.session.scalar(sa.select(User).where(User.username == "alice"))
        assert user.email == "alice@example.com"
        assert user.password_hash != "s3cret-pass" and user.check_password("s3cret-pass")
    client.post("/auth/logout")
    r = client.post("/auth/login", data={"username": "alice", "password": "s3cret-pass"})
    assert r.status_code == 302
    assert b"Hi, alice" in client.get("/").data


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("username", "ab", b"3 to 64 letters"),
        ("username", "a" * 65, b"3 to 64 letters"),
        ("username", "bad name", b"3 to 64 letters"),
        ("username", "<script>", b"3 to 64 letters"),
        ("username", "ALICE", b"That username is taken"),
        ("email", "not-an-email", b"That is not an email address."),
        ("email", "ALICE@example.com", b"already registered"),
        ("password", "short", b"At least 8 characters"),
        ("password2", "different-pass", b"Passwords must match"),
        ("username", "", b"This field is required"),
    ],
)
def test_register_rejects_bad_input_with_a_form_error(client, auth, app, field, value, message):
    auth.create("alice")
    data = {
        "username": "bob",
        "email": "bob@example.com",
        "password": "long-enough",
        "password2": "long-enough",
    }
    data[field] = value
    if field == "password":
        data["password2"] = value
    r = client.post("/auth/register", data=data)
    assert r.status_code == 200
    assert message in r.data
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(User.id))) == 1


def test_register_missing_fields_is_a_form_error_not_a_crash(client):
    r = client.post("/auth/register", data={})
    assert r.status_code == 200 and b"This field is required" in r.data


def test_login_with_wrong_password_is_refused(client, auth):
    auth.create("alice")
    r = auth.login("alice", "wrong-password")
    assert r.status_code == 200 and b"Invalid username or password" in r.data
    assert client.get("/messages").status_code == 302


def test_login_honours_local_next(client, auth):
    auth.create("alice")
    r = client.post("/auth/login?next=/messages", data={"username": "alice", "password": auth.password})
    assert r.headers["Location"] == "/messages"


@pytest.mark.parametrize(
    "target", ["http://evil.example/", "//evil.example/x", "/\\evil.example", "https:/x"]
)
def test_login_ignores_foreign_next(client, auth, target):
    auth.create("alice")
    r = client.post(
        "/auth/login", query_string={"next": target}, data={"username": "alice", "password": auth.password}
    )
    assert r.headers["Location"] == "/"


def test_remember_me_sets_the_remember_cookie(client, auth):
    auth.create("alice")
    r = auth.login("alice", remember_me="y")
    assert "remember_token=" in " ".join(r.headers.getlist("Set-Cookie"))


def test_logout_get_only_asks_and_post_ends_the_session(client, auth):
    auth.create("alice")
    auth.login("alice")
    page = client.get("/auth/logout")
    assert page.status_code == 200 and b"Log out?" in page.data
    assert client.get("/messages").status_code == 200, "a GET (any site's link) logs nobody out"
    assert client.post("/auth/logout").status_code == 302
    assert client.get("/messages").status_code == 302


def test_logout_needs_the_csrf_token(csrf_app):
    from tests.conftest import AuthActions

    client = csrf_app.test_client()
    auth = AuthActions(csrf_app, client)
    auth.create("alice")
    page = client.get("/auth/login")
    token = csrf_token(page.get_data(as_text=True))
    client.post("/auth/login", data={"username": "alice", "password": auth.password, "csrf_token": token})
    assert client.post("/auth/logout").status_code == 400, "another site's form cannot log you out"
    assert client.get("/messages").status_code == 200
    token = csrf_token(client.get("/").get_data(as_text=True))  # the navbar's logout form
    assert client.post("/auth/logout", data={"csrf_token": token}).status_code == 302
    assert client.get("/messages").status_code == 302


def test_a_copied_session_cookie_and_remember_me_cookie_stop_working_after_logout(app, auth):
    auth.create("alice")
    browser = app.test_client()
    r = browser.post("/auth/login", data={"username": "alice", "password": auth.password, "remember_me": "y"})
    cookies = {
        c.split("=", 1)[0]: c.split(";", 1)[0].split("=", 1)[1] for c in r.headers.getlist("Set-Cookie")
    }
    thief, remembered = app.test_client(), app.test_client()
    thief.set_cookie("session", cookies["session"])
    remembered.set_cookie("remember_token", cookies["remember_token"])
    assert thief.get("/messages").status_code == 200 and remembered.get("/messages").status_code == 200
    # /stream checks the login without loading the user; a remember-me cookie alone counts too
    # (a test client has no worker to hand the stream to: 503, past the login check).
    stream_only = app.test_client()
    stream_only.set_cookie("remember_token", cookies["remember_token"])
    assert thief.get("/stream").status_code == 503 and stream_only.get("/stream").status_code == 503
    assert browser.post("/auth/logout").status_code == 302
    assert thief.get("/messages").status_code == 302, "the copied session cookie is refused"
    assert remembered.get("/messages").status_code == 302, "the remember-me cookie is refused"
    assert thief.get("/stream").status_code == 401
    stream_only = app.test_client()
    stream_only.set_cookie("remember_token", cookies["remember_token"])
    assert stream_only.get("/stream").status_code == 401


def test_log_out_everywhere_ends_every_login_of_the_account(app, auth):
    auth.create("alice")
    auth.create("bob")
    laptop, phone, bobs = app.test_client(), app.test_client(), app.test_client()
    for client, name in ((laptop, "alice"), (phone, "alice"), (bobs, "bob")):
        client.post("/auth/login", data={"username": name, "password": auth.password})
    assert b"Log out everywhere" in phone.get("/user/alice").data
    assert phone.post("/auth/logout_everywhere").status_code == 302
    assert laptop.get("/messages").status_code == 302 and phone.get("/messages").status_code == 302
    assert bobs.get("/messages").status_code == 200, "other accounts stay logged in"


def test_protected_page_redirects_to_login_with_next(client):
    r = client.get("/messages")
    assert r.status_code == 302 and r.headers["Location"].startswith("/auth/login?next=")
