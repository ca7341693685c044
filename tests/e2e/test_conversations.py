"""Conversations as two people use them, in Chromium: threads, replies, "Seen", typing, toasts
that do not shout, long messages, a page left open, blocks."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import wait_for_stream

CSRF_LIMIT = 2  # seconds: the forms' token limit on this module's server (production: an hour)


@pytest.fixture(scope="module")
def server_env(server_env):
    """The e2e server, with the other forms' CSRF tokens expiring after CSRF_LIMIT seconds."""
    return {**server_env, "CSRF_TIME_LIMIT_SECONDS": str(CSRF_LIMIT)}


def open_conversation(page, other: str) -> None:
    page.goto(f"/messages/{other}")
    wait_for_stream(page)


def reply(page, text: str) -> None:
    """Type ``text`` in the reply box (a newline as Shift+Enter) and send it with Enter."""
    box = page.locator("#message")
    for i, line in enumerate(text.split("\n")):
        if i:
            box.press("Shift+Enter")
        box.press_sequentially(line)
    box.press("Enter")
    expect(box).to_have_value("")


def row(page, username: str):
    return page.locator(f'.conversation-row[data-with="{username}"]')


def test_three_messages_a_reply_and_seen_all_live(make_user, login_page):
    alice, bob = make_user("alice"), make_user("bob")
    a, b = login_page(alice), login_page(bob)
    a_list = a.context.new_page()  # alice's other tab, on her list of conversations
    a_list.goto("/messages")
    open_conversation(a, bob.username)
    for n, text in enumerate(("one", "two", "three"), 1):
        reply(a, text)
        expect(a.locator(".message.mine")).to_have_count(n)

    expect(row(a_list, bob.username).locator(".preview")).to_have_text("You: three")
    b.goto("/messages")
    expect(row(b, alice.username).locator(".preview")).to_have_text("three")
    expect(row(b, alice.username).locator(".unread .n")).to_have_text("3")
    expect(b.locator("#message_count")).to_have_text("3")

    row(b, alice.username).click()
    b.wait_for_url(f"**/messages/{alice.username}")
    expect(b.locator("#message")).to_be_focused()
    expect(b.locator("#message_count")).to_be_hidden()
    # "Seen" appears under alice's last message, live.
    seen = a.locator("#seen")
    expect(seen).to_be_visible()
    assert seen.evaluate("el => el.previousElementSibling.textContent").strip().startswith("three")

    wait_for_stream(b)
    reply(b, "hi alice\nsecond line")
    theirs = a.locator(".message:not(.mine) .message-body")
    expect(theirs).to_have_text("hi alice\nsecond line")
    expect(seen).to_be_visible()
    # Alice was looking: the reply is read at once, and her list and badge agree on it.
    expect(row(a_list, bob.username).locator(".preview")).to_have_text("hi alice second line")
    expect(row(a_list, bob.username).locator(".unread")).to_be_hidden()
    expect(a_list.locator("#message_count")).to_be_hidden()
    expect(a.locator("#toasts .toast")).to_have_count(0)  # no toast for the conversation in sight
    a_list.reload()
    expect(row(a_list, bob.username).locator(".unread")).to_be_hidden()
    expect(a_list.locator("#message_count")).to_have_text("0")


def test_typing_shows_on_the_other_side_and_goes_away(make_user, login_page):
    alice, bob = make_user("alice"), make_user("bob")
    a, b = login_page(alice), login_page(bob)
    open_conversation(a, bob.username)
    open_conversation(b, alice.username)
    typing = a.locator("#typing")
    b.locator("#message").press_sequentially("hel", delay=30)
    expect(typing).to_have_text(f"{bob.username} is typing…")
    expect(typing).to_have_text("", timeout=5000)  # gone within 5 s of the last key
    a.reload()
    wait_for_stream(a)
    expect(typing).to_have_text("")  # never replayed
    b.locator("#message").press_sequentially("lo", delay=30)
    expect(typing).to_have_text(f"{bob.username} is typing…")
    b.locator("#message").press("Enter")
    expect(a.locator(".message:not(.mine) .message-body")).to_have_text("hello")
    expect(typing).to_have_text("")  # the message replaces the signal


def test_six_quick_messages_raise_one_toast_and_a_title_count(make_user, login_page):
    carol, dave = make_user("carol"), make_user("dave")
    d = login_page(dave)
    behind = d.context.new_page()  # a tab in the background
    behind.goto("/users")
    d.bring_to_front()
    for i in range(6):
        assert carol.send(dave.username, f"quick {i}").status_code == 302
    title = d.locator("#toasts .toast .toast-title")
    expect(title).to_have_text(f"{carol.username}: 6 new messages")
    expect(d.locator("#toasts .toast")).to_have_count(1)
    expect(d.locator("#toasts .toast-body")).to_have_text("quick 5")
    expect(behind).to_have_title(re.compile(r"^\(6\) .*Tidings$"))
    d.locator("#toasts .toast-body").click()
    d.wait_for_url(f"**/messages/{carol.username}")
    expect(d.locator(".message-body")).to_have_count(6)
    expect(behind).to_have_title(re.compile(r"^Users · Tidings$"))


def test_a_long_message_round_trips_with_its_line_breaks_and_a_safe_link(make_user, login_page):
    alice, bob = make_user("alice"), make_user("bob")
    a, b = login_page(alice), login_page(bob)
    head = "<script>window.pwned=1</script> see https://example.com/path?q=1&r=2 then\n"
    text = head + ("x" * 79 + "\n") * 24
    text = text + "y" * (2000 - len(text))
    assert len(text) == 2000
    open_conversation(a, bob.username)
    a.locator("#message").fill(text)
    expect(a.locator("#char_count")).to_have_text("2,000 / 2,000")
    a.click("#submit")
    expect(a.locator(".message.mine")).to_have_count(1)
    open_conversation(b, alice.username)
    body = b.locator(".message-body")
    assert body.inner_text() == text
    link = body.locator("a")
    expect(link).to_have_count(1)
    expect(link).to_have_attribute("href", "https://example.com/path?q=1&r=2")
    expect(link).to_have_attribute("rel", "noopener nofollow ugc")
    assert b.evaluate("window.pwned") is None
    a.locator("#message").fill(text + "z")
    expect(a.locator("#char_count")).to_have_class(re.compile(r"\bover\b"))
    a.click("#submit")
    expect(a.locator("#reply_error")).to_have_text("At most 2,000 characters.")
    expect(a.locator("#message")).to_have_value(text + "z")


def test_a_reply_typed_past_the_form_token_limit_is_sent(make_user, login_page):
    alice, bob = make_user("alice"), make_user("bob")
    a = login_page(alice)
    open_conversation(a, bob.username)
    exports = a.context.new_page()
    exports.goto("/messages")
    a.locator("#message").fill("written slowly")
    time.sleep(CSRF_LIMIT + 1)  # the page is left open past the forms' token limit
    a.click("#submit")
    expect(a.locator(".message.mine .message-body")).to_have_text("written slowly")
    # The limit was real: the export form loaded at the same time has expired.
    exports.click("#export_button")
    expect(exports.locator("main")).to_contain_text("The form expired")


def test_a_blocked_sender_is_refused_and_unblocking_restores(make_user, login_page):
    alice, bob = make_user("alice"), make_user("bob")
    a, b = login_page(alice), login_page(bob)
    open_conversation(b, alice.username)
    b.click("#block_button")
    expect(b.locator("#block_button")).to_have_text(f"Unblock {alice.username}")
    open_conversation(a, bob.username)
    a.locator("#message").fill("are you there?")
    a.click("#submit")
    expect(a.locator("#reply_error")).to_have_text(f"{bob.username} is not accepting messages from you.")
    expect(a.locator("#message")).to_have_value("are you there?")
    b.click("#block_button")
    expect(b.locator("#block_button")).to_have_text(f"Block {alice.username}")
    a.click("#submit")
    expect(a.locator(".message.mine .message-body")).to_have_text("are you there?")
    expect(a.locator("#reply_error")).to_have_count(0)
    expect(b.locator(".message-body")).to_have_text("are you there?")


def test_the_first_tab_stop_skips_to_the_content(make_user, login_page):
    page = login_page(make_user("erin"))
    page.keyboard.press("Tab")
    expect(page.locator("#skip_link")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#content")).to_be_focused()
