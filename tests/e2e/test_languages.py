"""简体中文 and English, in the reader's time zone: a whole visit in Chromium set to zh-CN in
Shanghai, and the same in en-US in New York. Every visible word is in the page's language and
every time is the reader's local time."""

from __future__ import annotations

import json
import os
import re
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import wait_for_stream

# Words that stay as they are in any language: the brand, key names, the other language's name
# in its own script (the switcher), and the units the check strips below.
ANYWHERE = {"Tidings", "Enter", "Shift", "English", "UTC"}
LATIN_WORD = re.compile(r"[A-Za-z][A-Za-z']+")
HAN = re.compile(r"[\u4e00-\u9fff]")

READERS = {
    "zh-CN": {
        "timezone": "Asia/Shanghai",
        "han": True,
        "register": "注册",
        "toast": "发来消息",
        "download": "下载",
    },
    "en-US": {
        "timezone": "America/New_York",
        "han": False,
        "register": "Register",
        "toast": "Message from",
        "download": "Download",
    },
}


def words(*texts: str) -> set[str]:
    """The Latin words of names and message bodies (the reader's own, not the site's)."""
    return set(LATIN_WORD.findall(" ".join(texts)))


def visible_text(page) -> str:
    return page.locator("body").inner_text()


def assert_in_language(page, locale: str, own_words: set[str]) -> None:
    """Every word on the page is in the reader's language (names and message bodies aside)."""
    text = visible_text(page)
    if READERS[locale]["han"]:
        foreign = {w for w in LATIN_WORD.findall(text) if w not in ANYWHERE | own_words}
        assert not foreign, f"{page.url}: English left on a Chinese page: {sorted(foreign)}"
        assert HAN.search(text), f"{page.url}: no Chinese at all"
    else:
        chinese = HAN.findall(text.replace("简体中文", ""))
        assert not chinese, f"{page.url}: Chinese on an English page: {''.join(chinese)}"


def assert_local_times(page, zone: str) -> None:
    """Every <time> is shown by the page script (no "UTC" left) at the reader's local time."""
    times = page.locator("time[datetime]")
    page.wait_for_function(
        "() => !document.querySelector('time[datetime]') || "
        "[...document.querySelectorAll('time[datetime]')].every(t => !t.textContent.includes('UTC'))"
    )
    for i in range(times.count()):
        el = times.nth(i)
        moment = datetime.fromisoformat(el.get_attribute("datetime")).astimezone(ZoneInfo(zone))
        shown = (el.get_attribute("title") or "") + " " + el.inner_text()
        style = el.get_attribute("data-style")
        assert str(moment.day) in shown, f"{zone}: {shown!r} is not the local day of {moment}"
        if style != "date":
            hour = moment.strftime("%H:%M").lstrip("0")  # "9:05 PM" or "21:05": the minutes tell
            assert moment.strftime(":%M") in shown and (
                hour in shown or moment.strftime("%I:%M").lstrip("0") in shown
            ), f"{zone}: {shown!r} is not the local time {moment:%H:%M}"


def new_reader(browser, server, locale: str):
    context = browser.new_context(base_url=server.url, locale=locale, timezone_id=READERS[locale]["timezone"])
    return context, context.new_page()


@pytest.mark.parametrize("locale", ["zh-CN", "en-US"])
def test_a_whole_visit_in_the_readers_language_and_time_zone(browser, server, server_env, make_user, locale):
    from harness.servers import WorkerProcess

    reader = READERS[locale]
    bob = make_user("bob")  # another user, with an English browser
    context, page = new_reader(browser, server, locale)
    name = f"reader{locale[:2]}{bob.username[3:]}"
    own = words(name, bob.username, "hello from bob", "Hi bob")
    worker = WorkerProcess(
        {**server_env, "EXPORT_SLOWDOWN_SECONDS": "0.02"}, Path(server_env["_TMP"]) / f"w-{locale}.log"
    )
    worker.start()
    try:
        # Registering (which logs in) and the home page.
        page.goto("/auth/register")
        assert_in_language(page, locale, own)
        page.fill("#username", name)
        page.fill("#email", f"{name}@example.com")
        page.fill("#password", "correct horse battery")
        page.fill("#password2", "correct horse battery")
        page.click("#submit")
        page.wait_for_url(server.url + "/")
        wait_for_stream(page)
        assert_in_language(page, locale, own)
        assert page.locator("html").get_attribute("lang") == ("zh-Hans" if reader["han"] else "en")

        # A message from bob arrives live: a toast and the badge, in the page's language.
        assert bob.send(name, "hello from bob").status_code == 302
        expect(page.locator("#message_count")).to_have_text("1")
        expect(page.locator("#toasts .toast-title")).to_contain_text(reader["toast"])
        expect(page.locator("[data-unread-sentence]")).to_contain_text("1")
        assert_in_language(page, locale, own)

        # The directory, a profile, the conversation (and a reply), the list.
        for path in ("/users", f"/user/{bob.username}", f"/user/{name}"):
            page.goto(path)
            assert_in_language(page, locale, own)
            assert_local_times(page, reader["timezone"])
        page.goto(f"/messages/{bob.username}")
        wait_for_stream(page)
        page.fill("#message", "Hi bob")
        page.press("#message", "Enter")
        expect(page.locator(".message.mine")).to_have_count(1)
        assert_in_language(page, locale, own)
        assert_local_times(page, reader["timezone"])
        page.goto("/messages")
        wait_for_stream(page)
        assert_in_language(page, locale, own)
        assert_local_times(page, reader["timezone"])
        if os.environ.get("SCREENSHOT_DIR"):  # docs/languages.md's pictures (docs/testing.md)
            page.set_viewport_size({"width": 900, "height": 520})
            page.screenshot(path=str(Path(os.environ["SCREENSHOT_DIR"]) / f"inbox-{locale}.png"))

        # The export: its card's words while it runs and when it is done, and the file's title.
        page.click("#export_button")
        page.wait_for_url("**/messages")
        wait_for_stream(page)
        link = page.locator(".task .task-download").first
        expect(link).to_have_text(reader["download"], timeout=30_000)
        assert_in_language(page, locale, own)
        with page.expect_download() as download:
            link.click()
        exported = json.loads(Path(download.value.path()).read_text(encoding="utf-8"))
        assert bool(HAN.search(exported["title"])) == reader["han"], exported["title"]

        # Logging out, and the page a visitor then sees.
        page.click("#logout")
        page.wait_for_url(server.url + "/")
        assert_in_language(page, locale, own)
        expect(page.locator(".btn-primary").first).to_have_text(reader["register"])
    finally:
        worker.stop()
        context.close()


def test_english_chosen_on_the_profile_wins_over_a_chinese_browser_on_every_device(
    browser, server, make_user
):
    alice = make_user("alice")
    laptop, page = new_reader(browser, server, "zh-CN")
    phone, other = new_reader(browser, server, "zh-CN")
    try:
        for p in (page, other):
            p.goto("/auth/login")
            expect(p.locator("h1")).to_have_text("登录")
            p.fill("#username", alice.username)
            p.fill("#password", alice.password)
            p.click("#submit")
            p.wait_for_url(server.url + "/")
        page.goto(f"/user/{alice.username}")
        page.select_option("#language", "en")
        page.click("#save_language")
        expect(page.locator("#language")).to_have_value("en")
        assert_in_language(page, "en-US", words(alice.username))
        other.reload()  # the phone, no cookie of the laptop's: the saved choice
        assert_in_language(other, "en-US", words(alice.username))
        expect(other.locator("html")).to_have_attribute("lang", "en")
    finally:
        laptop.close()
        phone.close()


def test_the_switcher_works_logged_out_and_is_remembered(browser, server):
    context, page = new_reader(browser, server, "en-US")
    try:
        page.goto("/auth/login")
        page.click('#language_switcher button[value="zh_Hans"]')
        page.wait_for_url("**/auth/login")
        expect(page.locator("h1")).to_have_text("登录")
        page.goto("/")
        assert_in_language(page, "zh-CN", set())
    finally:
        context.close()
