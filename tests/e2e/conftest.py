"""Debian's Chromium, driven by Playwright, against a live gunicorn+gevent server."""

from __future__ import annotations

import pytest

from harness import tools
from harness.servers import make_server_env
from tests.conftest import need, reset_database
from tests.integration.conftest import (  # noqa: F401
    fake_push,
    make_user,
    proxied,
    redis_url,
    server,
    sqlite_env,
)

pytestmark = pytest.mark.e2e

# As root on a closed network Chromium needs these (docs/testing.md).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server_env(tmp_path_factory, redis_url, postgres_url) -> dict[str, str]:  # noqa: F811
    """The browser tests run once, on PostgreSQL (production's database): what they check is the
    page's; the integration tests run the same server code on SQLite and on PostgreSQL."""
    reset_database(postgres_url)
    return make_server_env(tmp_path_factory.mktemp("server"), postgres_url, redis_url)


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (never Playwright's own browser download)."""
    need(tools.CHROMIUM)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=tools.CHROMIUM.path(), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def login_page(browser, server):  # noqa: F811
    """Open a fresh browser context logged in as a user."""
    contexts = []

    def open_as(user, init_script: str | None = None, stream: bool = True, clock: bool = False):
        """``clock``: the pages' timers run on Playwright's clock, which the test may move on."""
        context = browser.new_context(base_url=server.url)
        contexts.append(context)
        if clock:
            context.clock.install()
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
