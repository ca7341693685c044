"""Debian's Chromium, driven by Playwright, against a live gunicorn+gevent server."""

from __future__ import annotations

import os

import pytest

from tests.conftest import IN_CI
from tests.integration.conftest import (  # noqa: F401
    make_user,
    proxied,
    redis_url,
    server,
    server_env,
    sqlite_env,
)

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
# As root on a closed network Chromium needs these (see README, "Tests").
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (never Playwright's own browser download)."""
    if not os.path.exists(CHROMIUM):
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium (make browser)")
        pytest.skip(f"{CHROMIUM} is missing: run `make browser` (as root) to install Debian's chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def login_page(browser, server):  # noqa: F811
    """Open a fresh browser context logged in as a user."""
    contexts = []

    def open_as(user, init_script: str | None = None, stream: bool = True):
        context = browser.new_context(base_url=server.url)
        contexts.append(context)
        if init_script:
            context.add_init_script(init_script)
        page = log_in(context.new_page(), user, server.url)
        if stream:
            wait_for_stream(page)
        return page

    yield open_as
    for context in contexts:
        context.close()


def log_in(page, user, base_url: str):
    """Log ``user`` in through the form in ``page``; returns the page, on the home page."""
    page.goto("/auth/login")
    page.fill("#username", user.username)
    page.fill("#password", user.password)
    page.click("#submit")
    page.wait_for_url(base_url + "/")
    return page


def wait_for_stream(page) -> None:
    """Wait until the page's EventSource is open."""
    page.wait_for_selector("body[data-stream-state=open]", state="attached", timeout=10_000)
