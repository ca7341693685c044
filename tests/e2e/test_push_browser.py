"""Web Push in Chromium: the profile's opt-in stores a subscription through the page's own route,
and the real service worker shows what the site pushed. Chromium here cannot reach a push service
(its own is Google's), so the two halves meet in the test: the subscription the page stores is one
of our push service's (harness/fakepush.py), whose ``PushManager.subscribe`` stands in for the
browser's; the payload that service decrypts is handed to the real service worker through CDP
(``ServiceWorker.deliverPushMessage``), with the notifications permission granted through CDP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import redis

from harness.servers import wait_until
from tests.e2e.conftest import log_in
from tests.integration.conftest import web_and_worker


@pytest.fixture(scope="module")
def server(server_env, fake_push, tmp_path_factory):
    env = {**server_env, **fake_push.settings(), "PUSH_DELAY_SECONDS": "1", "PRESENCE_INTERVAL_SECONDS": "1"}
    with web_and_worker(env, tmp_path_factory.mktemp("logs")) as web:
        yield web


# The browser's push service, as far as the page can tell: subscribe() answers with our push
# service's subscription (kept across reloads, as a browser keeps it), getSubscription() finds it.
STAND_IN = """
(() => {
  const given = %s;
  const stored = () => localStorage.getItem("test-subscription") && make();
  function forget() { localStorage.removeItem("test-subscription"); return Promise.resolve(true); }
  function make() {
    return { endpoint: given.endpoint, options: {}, toJSON: () => given, unsubscribe: forget };
  }
  PushManager.prototype.subscribe = function (options) {
    if (!options || !options.userVisibleOnly || !(options.applicationServerKey instanceof Uint8Array)
        || options.applicationServerKey.length !== 65) return Promise.reject(new Error("bad options"));
    localStorage.setItem("test-subscription", "1");
    return Promise.resolve(make());
  };
  PushManager.prototype.getSubscription = function () { return Promise.resolve(stored() || null); };
})();
"""


def notifications(page) -> list[dict]:
    return page.evaluate(
        """navigator.serviceWorker.ready.then(r => r.getNotifications()).then(list =>
             list.map(n => ({title: n.title, body: n.body, tag: n.tag, url: n.data && n.data.url})))"""
    )


def test_opt_in_then_a_push_while_the_tab_is_closed_shows_the_notification(
    browser, server, make_user, fake_push
):
    alice, bob = make_user("alice"), make_user("bob")
    device = fake_push.device()
    context = browser.new_context(base_url=server.url)
    context.add_init_script(STAND_IN % json.dumps(device.subscription()))
    page = log_in(context.new_page(), bob, server.url)
    cdp = browser.new_browser_cdp_session()
    targets = cdp.send("Target.getTargets")["targetInfos"]
    [context_id] = {t["browserContextId"] for t in targets if t["type"] == "page" and t["url"] == page.url}
    cdp.send(
        "Browser.grantPermissions",
        {"origin": server.url, "permissions": ["notifications"], "browserContextId": context_id},
    )

    page.goto(f"/user/{bob.username}")
    optin = page.locator("#push_optin")
    optin.wait_for(state="visible")
    assert page.evaluate("Notification.permission") == "granted"
    optin.click()
    page.wait_for_selector("#device_list .this-device:not([hidden])")  # stored, listed, marked as this one
    assert page.locator("#push_optin").is_hidden()
    assert page.locator("#presence[data-online=true]").is_visible(), "this tab makes bob online"
    if os.environ.get("SCREENSHOT_DIR"):  # docs/push.md's picture (docs/testing.md)
        page.set_viewport_size({"width": 900, "height": 640})
        page.screenshot(path=str(Path(os.environ["SCREENSHOT_DIR"]) / "push-devices.png"))
    assert page.evaluate(
        "navigator.serviceWorker.controller && navigator.serviceWorker.controller.scriptURL"
    ).endswith("/sw.js")

    # The visible tab says it is looking (tidings.js, POST /presence): a message now is not pushed.
    pushes = redis.Redis.from_url(server.env["REDIS_URL"])
    looked = int(pushes.hget("tidings:push:stats", "looking") or 0)
    assert alice.send(bob.username, "While you look").status_code == 302
    page.wait_for_selector("#toasts .toast")
    wait_until(lambda: int(pushes.hget("tidings:push:stats", "looking") or 0) > looked, 20, "not pushed")
    assert fake_push.to(device) == []

    page.close()  # no tab looking now: the next message is pushed
    assert alice.send(bob.username, "The keys are under the mat").status_code == 302
    wait_until(lambda: fake_push.to(device), 20, "the push")
    push = fake_push.to(device)[0]
    assert push.problem is None

    page = context.new_page()
    registrations = []
    session = context.new_cdp_session(page)
    session.on("ServiceWorker.workerRegistrationUpdated", lambda e: registrations.extend(e["registrations"]))
    session.send("ServiceWorker.enable")
    page.goto(f"/user/{bob.username}")
    wait_until(
        lambda: [r for r in registrations if r["scopeURL"] == server.url + "/"], 10, "the registration"
    )
    [registration] = [r for r in registrations if r["scopeURL"] == server.url + "/" and not r["isDeleted"]][
        :1
    ]
    session.send(
        "ServiceWorker.deliverPushMessage",
        {
            "origin": server.url,
            "registrationId": registration["registrationId"],
            "data": push.payload.decode(),
        },
    )
    wait_until(lambda: notifications(page), 10, "the notification")
    assert notifications(page) == [
        {
            "title": "2 new messages",  # the one seen as a toast is unread still
            "body": f"{alice.username}: The keys are under the mat",
            "tag": "messages",
            "url": f"{server.url}/messages/{alice.username}",
        }
    ]
    context.close()
