"""A way back in: password reset by mail, common passwords refused."""

from __future__ import annotations

import re
import time

import pytest

from app.auth.routes import reset_token
from app.extensions import db
from app.mail import mail
from app.models import User

LINK = re.compile(r"http://localhost(/auth/reset_password/\S+)")
NEW = "a brand new passphrase"


@pytest.fixture
def config(config):
    # The job runs inline; Flask-Mail, testing, records instead of sending.
    return {**config, "TASKS_RUN_INLINE": True, "MAIL_SERVER": "localhost"}


def ask(client, email: str):
    with mail.record_messages() as outbox:
        page = client.post("/auth/reset_password", data={"email": email}, follow_redirects=True)
    return page, outbox


def test_the_answer_is_the_same_whether_or_not_an_account_uses_the_address(app, auth, client):
    auth.create("alice")
    known, mails = ask(client, "alice@example.com")
    unknown, none = ask(client, "nobody@example.com")
    assert known.status_code == unknown.status_code == 200
    strip = [
        (p.get_data(as_text=True).replace(a, "ADDRESS"))
        for p, a in ((known, "alice@example.com"), (unknown, "nobody@example.com"))
    ]
    assert strip[0] == strip[1]
    assert len(mails) == 1 and not none
    assert mails[0].recipients == ["alice@example.com"] and LINK.search(mails[0].body)


def test_the_link_sets_a_new_password_once_and_ends_every_other_login(app, auth, client):
    auth.create("alice")
    elsewhere = app.test_client()
    elsewhere.post("/auth/login", data={"username": "alice", "password": auth.password})
    assert elsewhere.get("/messages").status_code == 200
    _, mails = ask(client, "alice@example.com")
    path = LINK.search(mails[0].body).group(1)
    assert client.get(path).status_code == 200
    r = client.post(path, data={"password": NEW, "password2": NEW})
    assert r.status_code == 302 and client.get("/messages").status_code == 200  # logged in here
    assert elsewhere.get("/messages").status_code == 302, "the other browser's login ended"
    used = client.get(path)
    assert used.status_code == 302 and used.headers["Location"] == "/auth/reset_password"
    client.post("/auth/logout")
    assert auth.login("alice", password=auth.password).status_code == 200  # the old one is refused
    assert auth.login("alice", password=NEW).status_code == 302


def test_an_expired_or_tampered_link_is_refused(app, auth, client, monkeypatch):
    auth.create("alice")
    with app.app_context():
        user = db.session.get(User, 1)
        with monkeypatch.context() as m:
            m.setattr(time, "time", lambda: 1_000_000_000.0)  # minted long ago
            old = reset_token(user)
        fresh = reset_token(user)
    for token in (old, fresh[:-2] + "xx", "nonsense"):
        r = client.get(f"/auth/reset_password/{token}")
        assert r.status_code == 302 and r.headers["Location"] == "/auth/reset_password"
        assert (
            client.post(f"/auth/reset_password/{token}", data={"password": NEW, "password2": NEW}).status_code
            == 302
        )
    assert auth.login("alice").status_code == 302  # unchanged


@pytest.mark.parametrize("password", ["password", "12345678", "P@ssw0rd", "qwertyuiop", "drowssap"])
def test_common_passwords_are_refused_with_a_clear_message(client, password):
    form = {"username": "carol", "email": "carol@example.com", "password": password, "password2": password}
    r = client.post("/auth/register", data=form)
    assert r.status_code == 200 and b"one of the most common passwords" in r.data


def test_a_reset_ends_the_trust_of_every_browser_that_logged_in_before(app, auth, client):
    from app.auth.throttle import Attempt

    auth.create("alice")
    old_browser = app.test_client()
    old_browser.post("/auth/login", data={"username": "alice", "password": auth.password})
    with app.test_request_context(headers={"Cookie": _device_cookie(old_browser)}):
        assert Attempt("alice").trusted()
    _, mails = ask(client, "alice@example.com")
    path = LINK.search(mails[0].body).group(1)
    assert client.post(path, data={"password": NEW, "password2": NEW}).status_code == 302
    with app.test_request_context(headers={"Cookie": _device_cookie(old_browser)}):
        assert not Attempt("alice").trusted(), "its device cookie predates the reset"
    with app.test_request_context(headers={"Cookie": _device_cookie(client)}):
        assert Attempt("alice").trusted(), "the browser that reset the password is trusted"


def test_two_open_forms_of_one_link_change_the_password_once(app, auth, client):
    auth.create("alice")
    _, mails = ask(client, "alice@example.com")
    path = LINK.search(mails[0].body).group(1)
    first, second = app.test_client(), app.test_client()
    assert first.get(path).status_code == second.get(path).status_code == 200  # both forms open
    assert first.post(path, data={"password": NEW, "password2": NEW}).status_code == 302
    late = second.post(path, data={"password": "another passphrase", "password2": "another passphrase"})
    assert late.status_code == 302 and late.headers["Location"] == "/auth/reset_password"
    assert auth.login("alice", password=NEW).status_code == 302


def _device_cookie(browser) -> str:
    from app.auth.throttle import DEVICE_COOKIE

    cookie = browser.get_cookie(DEVICE_COOKIE, path="/auth/")
    return f"{DEVICE_COOKIE}={cookie.value}" if cookie else ""


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"])
def test_a_forged_host_header_gets_the_same_answer_and_no_mail_links_to_it(app, auth, client, host):
    """Without PUBLIC_URL a link takes the request's origin only for a host the site vouches
    for (MAIL_LINK_HOSTS, loopback by default): a reset asked with ``Host: evil.example``
    would otherwise mail alice a link to the attacker's site."""
    auth.create("alice")
    honest, _ = ask(client, "nobody@example.com")
    with mail.record_messages() as outbox:
        forged = client.post(
            "/auth/reset_password",
            data={"email": "alice@example.com"},
            headers={"Host": host},
            follow_redirects=True,
        )
    assert forged.status_code == honest.status_code == 200
    assert outbox == [], "no mail carries a link to a host nobody vouched for"
    assert "alice@example.com" in forged.get_data(as_text=True)


def test_public_url_sets_the_link_whatever_the_host_header(app, auth, client):
    auth.create("alice")
    app.config["PUBLIC_URL"] = "https://tidings.example"
    with mail.record_messages() as outbox:
        client.post(
            "/auth/reset_password", data={"email": "alice@example.com"}, headers={"Host": "evil.example"}
        )
    assert len(outbox) == 1 and "https://tidings.example/auth/reset_password/" in outbox[0].body
    assert "evil.example" not in outbox[0].body
