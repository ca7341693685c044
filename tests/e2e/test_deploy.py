"""What a user sees during a deploy: nothing. The page's one stream stays open across ``kill -HUP``
(the old workers carry it to the new ones) and the badge keeps moving."""

from __future__ import annotations

import signal

import pytest
from playwright.sync_api import expect

from harness.servers import LiveServer, wait_until
from tests.e2e.test_live_badge import send_through_the_form


@pytest.fixture(scope="module")
def server(server_env, tmp_path_factory):
    """This module's own gunicorn: the test restarts its workers."""
    live = LiveServer(server_env, tmp_path_factory.mktemp("log") / "gunicorn.log").start()
    yield live
    live.stop()


def test_a_deploy_keeps_the_pages_stream_open_and_the_badge_live(server, make_user, login_page):
    alice, bob = make_user("alice"), make_user("bob")
    sender = login_page(alice, stream=False)
    page = login_page(bob)
    opened = []
    page.on("request", lambda request: opened.append(request.url) if "/stream" in request.url else None)
    badge = page.locator("#message_count")

    for deploy in range(2):
        old = server.live_worker_pids()
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda old=old: not server.live_worker_pids() & old, 30, "the old workers to be gone")
        send_through_the_form(sender, bob.username, f"after deploy {deploy}")
        expect(badge).to_have_text(str(deploy + 1), timeout=5000)

    assert opened == [], f"the page opened its stream again: {opened}"
    assert page.get_attribute("body", "data-stream-state") == "open"
