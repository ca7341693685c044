"""What a user sees: the badge and toasts change without a reload."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from playwright.sync_api import expect

from harness.servers import BIN, ROOT, free_port, log_problems, wait_until
from tests.e2e.conftest import log_in, wait_for_stream

HTML_BODY = '<img src=x onerror="window.pwned=1"><b>bold</b>'


def send_through_the_form(page, recipient: str, text: str) -> None:
    """From the recipient's profile, through the conversation's reply box; returns once the
    message is in the thread (the box empties when the server has taken it)."""
    page.goto(f"/user/{recipient}")
    page.click("#send_message_link")
    page.wait_for_url(f"**/messages/{recipient}")
    sent = page.locator(".message.mine").count()
    page.fill("#message", text)
    page.click("#submit")
    expect(page.locator("#message")).to_have_value("")
    expect(page.locator(".message.mine")).to_have_count(sent + 1)


def test_badge_goes_live_from_0_to_1_and_html_stays_text(make_user, login_page):
    alice, bob = make_user("alice"), make_user("bob")
    a_page, b_page = login_page(alice), login_page(bob)
    badge = b_page.locator("#message_count")
    expect(badge).to_be_hidden()
    expect(badge).to_have_text("0")

    send_through_the_form(a_page, bob.username, HTML_BODY)
    sent = time.monotonic()
    expect(badge).to_have_text("1", timeout=1000)
    expect(badge).to_be_visible(timeout=1000)
    latency = time.monotonic() - sent
    assert latency < 1.0

    toast = b_page.locator("#toasts .toast").first
    expect(toast).to_contain_text(f"Message from {alice.username}")
    expect(toast.locator(".toast-body")).to_have_text(HTML_BODY)
    assert toast.locator("b, img").count() == 0
    assert b_page.evaluate("window.pwned") is None

    b_page.goto(f"/messages/{alice.username}")
    expect(b_page.locator(".message-body").first).to_have_text(HTML_BODY)
    assert b_page.locator(".message-body b").count() == 0


def test_reading_a_conversation_in_one_tab_clears_the_badge_in_the_others(make_user, login_page):
    alice, bob = make_user("alice"), make_user("bob")
    a_page, first_tab = login_page(alice), login_page(bob)
    send_through_the_form(a_page, bob.username, "one")
    send_through_the_form(a_page, bob.username, "two")
    badge = first_tab.locator("#message_count")
    expect(badge).to_have_text("2")

    second_tab = first_tab.context.new_page()
    second_tab.goto(f"/messages/{alice.username}")
    expect(second_tab.locator(".message-body")).to_have_count(2)
    expect(badge).to_be_hidden()
    expect(badge).to_have_text("0")


def test_logging_out_elsewhere_sends_this_tab_to_the_login_page(make_user, login_page):
    bob = make_user("bob")
    page = login_page(bob)
    other_tab = page.context.new_page()
    other_tab.goto("/")
    other_tab.click("#logout")
    # The stream ends, the browser reconnects, gets 401, and the script goes to the login page.
    page.wait_for_url("**/auth/login?next=*", timeout=10_000)


def test_set_message_count_drives_the_badge(make_user, login_page):
    page = login_page(make_user("carol"))
    page.evaluate("set_message_count(7)")
    expect(page.locator("#message_count")).to_have_text("7")
    expect(page.locator("#message_count")).to_be_visible()
    page.evaluate("set_message_count(0)")
    expect(page.locator("#message_count")).to_be_hidden()


def test_phone_width_navbar_collapses_and_still_shows_the_badge(make_user, login_page, browser, server):
    bob = make_user("bob")
    page = login_page(bob)
    page.set_viewport_size({"width": 375, "height": 740})
    page.reload()
    wait_for_stream(page)
    toggler = page.locator(".navbar-toggler")
    expect(toggler).to_be_visible()
    toggler.click()
    expect(page.locator("#messages_link")).to_be_visible()
    page.screenshot(path=str(server.log_path.parent / "phone.png"))


def test_export_progress_bar_moves_then_offers_the_download(make_user, login_page, server_env):
    from harness.servers import WorkerProcess
    from tests.integration.test_workers import add_messages

    alice, bob = make_user("alice"), make_user("bob")
    add_messages(server_env["DATABASE_URL"], alice.username, bob.username, 150)
    log = Path(server_env["_TMP"]) / "worker.log"
    worker = WorkerProcess({**server_env, "EXPORT_SLOWDOWN_SECONDS": "0.01"}, log)
    worker.start()
    try:
        page = login_page(bob)
        page.goto("/messages")
        wait_for_stream(page)
        page.click("#export_button")
        page.wait_for_url("**/messages")
        wait_for_stream(page)
        bar = page.locator(".task .progress-bar").first
        # Record every width the bar takes as the stream drives it.
        bar.evaluate(
            """el => { window.widths = [el.style.width];
                new MutationObserver(() => window.widths.push(el.style.width))
                  .observe(el, {attributes: true, attributeFilter: ["style"]}); }"""
        )
        link = page.locator(".task .task-download").first
        expect(link).to_be_visible(timeout=30_000)
        widths = set(page.evaluate("window.widths"))
        assert len(widths - {"0%", "100%"}) >= 2, f"the bar moved through {sorted(widths)}"
        expect(bar).to_have_attribute("style", "width: 100%;")
        with page.expect_download() as download:
            link.click()
        assert download.value.suggested_filename == f"tidings-messages-{bob.username}.json"
    finally:
        worker.stop()


def wait_for_a_poll(page) -> None:
    """Until a poll brings the badge to 1: polls come every 10 s of the page's clock, which the
    test moves on rather than wait."""
    badge = page.locator("#message_count")

    def polled() -> bool:
        page.clock.fast_forward(10_000)
        return badge.inner_text() == "1"

    wait_until(polled, 10, "a poll to bring the count")


def test_without_eventsource_the_page_falls_back_to_polling(make_user, login_page):
    alice, bob = make_user("alice"), make_user("bob")
    page = login_page(bob, init_script="delete window.EventSource;", stream=False, clock=True)
    alice.send(bob.username, "polled")
    wait_for_a_poll(page)
    assert page.get_attribute("body", "data-stream-state") == "polling", "no EventSource was opened"


def test_under_flask_run_the_page_says_why_once_and_polls(browser, server, server_env, make_user, tmp_path):
    """``flask run`` cannot hold a stream: /stream answers 503 with a header saying why, and the
    page (every tab of it) polls /notifications instead of retrying the stream for ever."""
    alice, bob = make_user("alice"), make_user("bob")
    port = free_port()
    log = tmp_path / "flask-run.log"
    dev = subprocess.Popen(
        [BIN / "flask", "--app", "wsgi", "run", "--port", str(port)],
        cwd=ROOT,
        env={**server_env, "FLASK_RUN_HOST": "127.0.0.1"},
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: b"Running on" in log.read_bytes(), 30, "flask run to serve")
        context = browser.new_context(base_url=url)
        context.clock.install()
        warnings = []
        page = context.new_page()
        page.on("console", lambda m: warnings.append(m.text) if m.type == "warning" else None)
        log_in(page, bob, url)
        page.wait_for_selector("body[data-stream-state=polling]", state="attached", timeout=10_000)
        alice.send(bob.username, "polled under flask run")
        wait_for_a_poll(page)
        said = [w for w in warnings if "no live stream here" in w]
        assert len(said) == 1 and "gunicorn" in said[0], warnings
        context.close()
    finally:
        dev.terminate()
        dev.wait(10)
    # Its one critical line is the reason the page was told; nothing else went wrong.
    assert log_problems(log.read_text(errors="replace"), [re.compile("/stream needs")]) == []
