"""A service publishes through the API from Node (no packages) and a person sees it in Chromium:
live in an open tab, in a tab opened later (stored), once however often the service retries."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from playwright.sync_api import expect

from tests.e2e.conftest import wait_for_stream
from tests.integration.test_api import flask

ROOT = Path(__file__).resolve().parents[2]
KINDS = {
    "build_finished": {
        "per": "build",
        "title": "Build {build} finished",
        "body": "{result} in {seconds} s",
        "link": "/user/{who}",
    }
}


@pytest.fixture(scope="module")
def server_env(server_env, tmp_path_factory):
    """The e2e server, with a kinds file declaring build_finished."""
    path = tmp_path_factory.mktemp("kinds") / "kinds.json"
    path.write_text(json.dumps(KINDS))
    return {**server_env, "NOTIFICATION_KINDS_FILE": str(path)}


def node_publish(server, token: str, *args: str) -> tuple[int, dict]:
    run = subprocess.run(
        ["node", str(ROOT / "examples" / "publish" / "publish.mjs"), *args],
        env={**os.environ, "TIDINGS_URL": server.url, "TIDINGS_KEY": token},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return run.returncode, json.loads(run.stdout)


def test_a_node_script_publishes_and_the_page_shows_it_live_later_and_once(
    make_user, login_page, server, server_env
):
    alice = make_user("alice")
    created = flask(server_env, "keys", "create", f"ci-{alice.username}", "--kinds", "build_finished")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    page = login_page(alice)

    data = json.dumps({"build": "42", "result": "passed", "seconds": 73, "who": alice.username, "x": "<b>"})
    code, first = node_publish(server, token, alice.username, "build_finished", data, "build-42")
    assert code == 0, first
    toast = page.locator('#toasts .toast[data-kind="build_finished"]')
    expect(toast.locator(".toast-title")).to_have_text("Build 42 finished")
    expect(toast.locator(".toast-body")).to_have_text("passed in 73 s")
    expect(toast.locator(".toast-body")).to_have_attribute("href", f"/user/{alice.username}")

    later = page.context.new_page()  # a tab opened afterwards: the stored notification
    later.goto("/users")
    wait_for_stream(later)
    expect(later.locator('#toasts .toast[data-kind="build_finished"] .toast-title')).to_have_text(
        "Build 42 finished"
    )

    code, again = node_publish(server, token, alice.username, "build_finished", data, "build-42")
    assert code == 0 and again == first, "the retry gets the first answer"
    engine = sa.create_engine(server_env["DATABASE_URL"])
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                'SELECT count(*) FROM notification n JOIN "user" u ON u.id = n.user_id '
                "WHERE u.username = :u AND n.name = 'build_finished'"
            ),
            {"u": alice.username},
        ).scalar()
    engine.dispose()
    assert rows == 1, "stored once"
    expect(page.locator('#toasts .toast[data-kind="build_finished"]')).to_have_count(1)

    # Dismissed, it is gone from later pages too.
    with page.expect_response("**/dismiss") as dismissed:
        toast.locator(".btn-close").click()
    assert dismissed.value.status == 204
    expect(toast).to_have_count(0)
    later.reload()
    wait_for_stream(later)
    expect(later.locator('#toasts .toast[data-kind="build_finished"]')).to_have_count(0)


def test_a_narrow_key_and_a_revoked_key_are_refused(make_user, server, server_env):
    bob = make_user("bob")
    created = flask(server_env, "keys", "create", f"narrow-{bob.username}", "--kinds", "build_finished")
    token = created.stdout.strip()
    code, answer = node_publish(server, token, bob.username, "unread_message_count", "5")
    assert code == 1 and "may not send" in answer["error"]
    code, answer = node_publish(server, token, f"{bob.username},nobody-here", "build_finished", "{}")
    assert code == 1 and answer["to"] == "nobody-here"
    assert flask(server_env, "keys", "revoke", f"narrow-{bob.username}").returncode == 0
    code, answer = node_publish(server, token, bob.username, "build_finished", "{}")
    assert code == 1 and "valid key" in answer["error"]
