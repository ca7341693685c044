"""A way back in, end to end: gunicorn, the RQ worker and a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import queue
import re
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller

from harness.clients import WebUser, csrf_token, registered
from harness.servers import LiveServer, WorkerProcess, free_port, wait_until

LINK = re.compile(r"http://127\.0\.0\.1:\d+(/auth/reset_password/\S+)")
NEW = "a brand new passphrase"
CSRF = re.compile(r'name="csrf_token" type="hidden" value="[^"]+"')


class Inbox:
    """aiosmtpd's handler: every mail it accepts, in arrival order."""

    def __init__(self) -> None:
        self.mails: queue.Queue = queue.Queue()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.mails.put((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"

    def next(self, timeout: float = 20):
        return self.mails.get(timeout=timeout)


@pytest.fixture
def smtp():
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield controller, inbox
    controller.stop()


LIFETIME = {"RESET_TOKEN_SECONDS": "6"}  # short, so that the test can see a link expire


@pytest.fixture(scope="module")
def server(server_env, tmp_path_factory):
    """This module's gunicorn, with short-lived reset links."""
    live = LiveServer({**server_env, **LIFETIME}, tmp_path_factory.mktemp("log") / "gunicorn.log").start()
    yield live
    live.stop()


@pytest.fixture
def mailing_worker(server_env, smtp, tmp_path):
    controller, _ = smtp
    env = {**server_env, **LIFETIME, "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": str(controller.port)}
    proc = WorkerProcess(env, tmp_path / "worker.log").start()
    yield proc
    proc.stop()


def ask_for_a_link(server, email: str) -> str:
    """The page a stranger sees after asking for a link for ``email``."""
    stranger = WebUser(server.url, "stranger")
    page = stranger.http.get("/auth/reset_password")
    r = stranger.http.post(
        "/auth/reset_password",
        data={"csrf_token": csrf_token(page.text), "email": email},
        follow_redirects=True,
    )
    assert r.status_code == 200
    stranger.close()
    return CSRF.sub("", r.text.replace(email, "ADDRESS"))  # each page's form token differs


def test_a_forgotten_password_comes_back_by_mail_once_and_ends_every_other_login(
    server, make_user, smtp, mailing_worker
):
    _, inbox = smtp
    alice = make_user("resetme")
    phone = registered(server.url, "resetme_phone")  # a second account, to check nobody else is hit
    laptop = WebUser(server.url, alice.username, alice.password).login()  # another of alice's logins
    assert laptop.http.get("/messages").status_code == 200

    unknown = ask_for_a_link(server, "nobody@example.com")
    known = ask_for_a_link(server, f"{alice.username}@example.com")
    assert known == unknown, "the answer does not tell which addresses have accounts"
    recipients, mail = inbox.next()
    assert recipients == [f"{alice.username}@example.com"] and inbox.mails.empty()
    path = LINK.search(mail.get_payload()).group(1)

    browser = WebUser(server.url, alice.username, NEW)
    page = browser.http.get(path)
    assert page.status_code == 200
    form = {"csrf_token": csrf_token(page.text), "password": NEW, "password2": NEW}
    assert browser.http.post(path, data=form).status_code == 302
    assert browser.http.get("/messages").status_code == 200, "the reset logs this browser in"
    for other in (alice, laptop):
        assert other.http.get("/messages").status_code == 302, "every other login ended"
    assert phone.http.get("/messages").status_code == 200
    again = browser.http.get(path)
    assert again.status_code == 302 and again.headers["location"] == "/auth/reset_password"

    # A second link works until its lifetime (6 s here) runs out, and not after.
    ask_for_a_link(server, f"{alice.username}@example.com")
    _, mail = inbox.next()
    late = LINK.search(mail.get_payload()).group(1)
    stale = WebUser(server.url, "late")
    assert stale.http.get(late).status_code == 200
    wait_until(lambda: stale.http.get(late).status_code == 302, 30, "the link to expire")
    assert stale.http.get(late).headers["location"] == "/auth/reset_password"
    WebUser(server.url, alice.username, NEW).login()
