"""Twelve tabs of one user in Chromium, over HTTPS and HTTP/2 through nginx: every one live."""

from __future__ import annotations

from playwright.sync_api import expect

from harness.clients import WebUser
from tests.e2e.conftest import log_in, wait_for_stream

TABS = 12
NO_SHARING = "delete navigator.__proto__.locks; delete window.BroadcastChannel;"


def test_twelve_tabs_over_https_and_http2_each_with_its_own_stream_are_all_live(browser, proxied):
    web, nginx = proxied
    alice = WebUser(nginx.url, "tabs_alice", http2=True, verify=False)
    bob = WebUser(nginx.url, "tabs_bob", http2=True, verify=False)
    for user in (alice, bob):
        assert user.register().status_code == 302  # and logged in

    context = browser.new_context(base_url=nginx.url, ignore_https_errors=True)
    # Tabs would share one stream; here every tab must hold its own, to prove the proxy path.
    context.add_init_script(NO_SHARING)
    try:
        first = log_in(context.new_page(), bob, nginx.url)
        tabs = [first] + [context.new_page() for _ in range(TABS - 1)]
        for tab in tabs[1:]:
            tab.goto("/")
        for tab in tabs:
            wait_for_stream(tab)
        protocol = first.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
        assert protocol == "h2", "the browser talks HTTP/2 to nginx"

        # Each tab holds its own EventSource: twelve streams on the server, on one connection.
        metrics = web.get("/metrics").text
        assert f"tidings_streams_open {float(TABS)}" in metrics

        assert alice.send(bob.username, "to every tab").status_code == 302
        for tab in tabs:
            expect(tab.locator("#message_count")).to_have_text("1", timeout=1000)
    finally:
        context.close()
        alice.close()
        bob.close()
