"""Many tabs of one login share one stream: a leader tab holds the EventSource, the others get
its relays; hand-over on close and on freeze; logout reaches every tab; fallbacks."""

from __future__ import annotations

import time

import pytest
import redis
import sqlalchemy as sa
from playwright.sync_api import expect

from harness.clients import user_id
from harness.servers import LiveServer
from tests.e2e.conftest import wait_for_stream
from tests.e2e.test_proxy_tabs import NO_SHARING

TABS = 12


@pytest.fixture(scope="module")
def server(server_env, tmp_path_factory):
    """This module's gunicorn counts every user's streams (the per-user cap's leases in Redis)."""
    env = {**server_env, "MAX_STREAMS_PER_USER": "50"}
    live = LiveServer(env, tmp_path_factory.mktemp("log") / "gunicorn.log").start()
    yield live
    live.stop()


def streams_of(redis_url: str, uid: int) -> int:
    """Open streams of a user on the server, across every worker (the per-user cap's leases)."""
    return redis.Redis.from_url(redis_url).zcard(f"tidings:streams:{uid}")


def open_tabs(first, count: int) -> list:
    """``first`` (logged in) and count-1 more tabs of the same browser, each timed to load."""
    tabs = [first]
    for _ in range(count - 1):
        tab = first.context.new_page()
        started = time.monotonic()
        tab.goto("/", timeout=2000)  # every page loads: no connection is held for a stream
        assert time.monotonic() - started < 2
        tabs.append(tab)
    for tab in tabs:
        wait_for_stream(tab)
    return tabs


def leaders(tabs) -> list:
    return [t for t in tabs if t.get_attribute("body", "data-stream-role") == "leader"]


def wait_for_one_leader(tabs, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = leaders(tabs)
        if len(found) == 1 and found[0].get_attribute("body", "data-stream-state") == "open":
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no single open leader within {timeout}s: {len(leaders(tabs))} leaders")


def test_twelve_tabs_share_one_stream_and_all_go_live(make_user, login_page, server_env, redis_url):
    alice, bob = make_user("alice"), make_user("bob")
    tabs = open_tabs(login_page(bob), TABS)
    wait_for_one_leader(tabs, 5)
    assert streams_of(redis_url, user_id(server_env, bob.username)) == 1, "one stream for the browser"
    assert alice.send(bob.username, "to every tab").status_code == 302
    for tab in tabs:
        expect(tab.locator("#message_count")).to_have_text("1", timeout=1000)


def test_closing_the_leader_hands_over_within_2s_and_no_tab_misses_or_repeats(make_user, login_page):
    alice, bob = make_user("alice"), make_user("bob")
    tabs = open_tabs(login_page(bob), 4)
    leader = wait_for_one_leader(tabs, 5)
    sent = 0
    for i in range(3):
        assert alice.send(bob.username, f"before {i}").status_code == 302
        sent += 1
    leader.close()
    tabs.remove(leader)
    closed = time.monotonic()
    for i in range(3):  # messages keep arriving during the hand-over
        assert alice.send(bob.username, f"during {i}").status_code == 302
        sent += 1
    wait_for_one_leader(tabs, 2)
    assert time.monotonic() - closed < 2.5
    for i in range(2):
        assert alice.send(bob.username, f"after {i}").status_code == 302
        sent += 1
    for tab in tabs:
        expect(tab.locator("#message_count")).to_have_text(str(sent), timeout=3000)
        toasts = tab.locator("#toasts .toast-body").all_inner_texts()
        assert len(toasts) == len(set(toasts)), f"a toast shown twice: {toasts}"


def test_a_frozen_leader_is_replaced_and_the_others_keep_updating(make_user, login_page):
    alice, bob = make_user("alice"), make_user("bob")
    tabs = open_tabs(login_page(bob), 3)
    leader = wait_for_one_leader(tabs, 5)
    cdp = leader.context.new_cdp_session(leader)
    # Headless Chromium keeps every page visible, and refuses to freeze a visible page (its
    # timers kept running when tried), so the freeze is also made real by stopping the
    # leader's script where it next runs: no beat, no relay, the lock still held.
    cdp.send("Page.setWebLifecycleState", {"state": "frozen"})
    cdp.send("Debugger.enable")
    cdp.send("Debugger.pause")
    others = [t for t in tabs if t is not leader]
    wait_for_one_leader(others, 10)
    assert alice.send(bob.username, "after the freeze").status_code == 302
    for tab in others:
        expect(tab.locator("#message_count")).to_have_text("1", timeout=3000)
    cdp.send("Debugger.resume")
    cdp.send("Page.setWebLifecycleState", {"state": "active"})
    expect(leader.locator("body")).to_have_attribute("data-stream-role", "follower", timeout=5000)
    expect(leader.locator("#message_count")).to_have_text("1", timeout=5000)


def test_two_users_stay_apart_and_logout_reaches_every_tab_of_that_login(make_user, login_page):
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    bob_tabs = open_tabs(login_page(bob), 3)
    carol_tabs = open_tabs(login_page(carol), 2)
    assert alice.send(bob.username, "for bob").status_code == 302
    for tab in bob_tabs:
        expect(tab.locator("#message_count")).to_have_text("1", timeout=2000)
    for tab in carol_tabs:
        expect(tab.locator("#message_count")).to_have_text("0")
    bob_tabs[1].click("#logout")
    for tab in (bob_tabs[0], bob_tabs[2]):
        tab.wait_for_url("**/auth/login?next=*", timeout=10_000)
    assert alice.send(carol.username, "for carol").status_code == 302
    for tab in carol_tabs:
        expect(tab.locator("#message_count")).to_have_text("1", timeout=2000)


def test_at_phone_width_a_send_shows_a_count_without_opening_the_menu(make_user, login_page):
    alice, bob = make_user("alice"), make_user("bob")
    page = login_page(bob)
    page.set_viewport_size({"width": 390, "height": 800})
    expect(page.locator(".navbar-toggler")).to_be_visible()
    expect(page.locator("#message_count")).to_be_hidden()  # behind the closed menu
    assert alice.send(bob.username, "on the phone").status_code == 302
    mobile = page.locator("#message_count_mobile")
    expect(mobile).to_be_visible(timeout=1000)
    expect(mobile).to_have_text("1")
    expect(page.locator("[data-unread-sentence]")).to_have_text("1 unread message")  # the home page's own


def test_without_web_locks_and_broadcastchannel_every_tab_has_its_own_stream(
    make_user, login_page, server_env, redis_url
):
    alice, bob = make_user("alice"), make_user("bob")
    tabs = open_tabs(login_page(bob, init_script=NO_SHARING), 3)
    for tab in tabs:
        assert tab.get_attribute("body", "data-stream-role") == "own"
    assert streams_of(redis_url, user_id(server_env, bob.username)) == 3
    assert alice.send(bob.username, "to each stream").status_code == 302
    for tab in tabs:
        expect(tab.locator("#message_count")).to_have_text("1", timeout=1000)


def test_a_progress_event_carrying_a_foreign_link_never_becomes_one(
    make_user, login_page, server_env, redis_url
):
    import json

    bob = make_user("bob")
    uid = user_id(server_env, bob.username)
    engine = sa.create_engine(server_env["DATABASE_URL"])
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO task (id, name, description, user_id, status, progress, created_at) "
                "VALUES ('t-links', 'export_messages', 'Export of your messages', :u, 'running', 10, :t)"
            ),
            {"u": uid, "t": "2026-01-01 00:00:00"},
        )
    engine.dispose()
    page = login_page(bob)
    page.goto("/messages")
    wait_for_stream(page)
    r = redis.Redis.from_url(redis_url)
    status, link = page.locator(".task .task-status"), page.locator(".task .task-download")

    def progress(percent: int, url: str) -> None:
        data = {"task_id": "t-links", "progress": percent, "status": "running", "download_url": url}
        r.publish(f"notifications:{uid}", json.dumps({"name": "task_progress", "data": data}))

    progress(100, "javascript:alert(1)")
    progress(100, "https://elsewhere.example/exports/t-links")
    r.publish(f"notifications:{uid}", json.dumps({"name": "announcement", "data": "after the links"}))
    expect(page.locator("#toasts")).to_contain_text("after the links", timeout=3000)  # both handled
    expect(status).to_have_text("Preparing… 100%")
    assert link.count() == 0, "neither became a link"
    progress(100, "/exports/t-links")
    expect(link).to_have_attribute("href", "/exports/t-links", timeout=3000)
    expect(status).to_have_text("Ready · Download")
