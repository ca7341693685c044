"""Web Push end to end: gunicorn, the RQ worker (with its scheduler) and a push service of our
own (harness/fakepush.py: HTTPS on 127.0.0.1, trusted through REQUESTS_CA_BUNDLE), which checks
every push's VAPID signature and decrypts it with the device's keys, as a browser's would."""

from __future__ import annotations

import re
import time

import pytest
import redis
import sqlalchemy as sa

from harness.servers import wait_until
from tests.integration.conftest import web_and_worker

SUBJECT = "mailto:ops@tidings.test"
DELAY = 4  # long enough for a test's sends and reads to land within it on a loaded machine


@pytest.fixture(scope="module")
def push_env(sqlite_env, fake_push):
    return {
        **sqlite_env,
        **fake_push.settings(SUBJECT),
        "PUSH_ALLOWED_ORIGINS": f"{fake_push.origin},https://*.push.example",
        "PUSH_DELAY_SECONDS": str(DELAY),
        "PUSH_TIMEOUT_SECONDS": "1",
        "PRESENCE_INTERVAL_SECONDS": "1",
    }


@pytest.fixture(scope="module")
def server(push_env, tmp_path_factory):
    """This module's gunicorn (``make_user`` registers users on it) and its RQ worker."""
    with web_and_worker(push_env, tmp_path_factory.mktemp("push-logs")) as web:
        yield web


@pytest.fixture
def people(make_user):
    return make_user("alice"), make_user("bob")


def stats(env) -> dict[str, int]:
    raw = redis.Redis.from_url(env["REDIS_URL"]).hgetall("tidings:push:stats")
    return {k.decode(): int(v) for k, v in raw.items()}


def outcome(env, name: str, before: dict[str, int], timeout: float = DELAY + 15) -> None:
    """Wait for the worker to count one more ``name`` outcome (it decided, whatever it was)."""
    wait_until(lambda: stats(env).get(name, 0) > before.get(name, 0), timeout, f"a push {name!r}")


def subscribe(user, device) -> None:
    r = user.script("POST", "/push/subscriptions", device.subscription())
    assert r.status_code == 201, r.text


def devices(env, username: str) -> list[str]:
    engine = sa.create_engine(env["DATABASE_URL"])
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    'SELECT endpoint FROM push_subscription JOIN "user" u ON u.id = user_id '
                    "WHERE u.username = :name"
                ),
                {"name": username},
            ).scalars()
        )


def test_a_message_to_someone_with_no_tab_looking_is_pushed_signed_encrypted_in_their_language(
    people, fake_push, push_env
):
    alice, bob = people
    assert (
        bob.post_form("/language", {"language": "zh_Hans"}, form_page=f"/user/{bob.username}").status_code
        == 302
    )
    device = fake_push.device()
    subscribe(bob, device)
    profile = bob.http.get(f"/user/{bob.username}").text
    vapid_key = re.search(r'data-vapid-key="([^"]+)"', profile).group(1)
    assert device.endpoint in profile, "the device is listed on the profile"

    assert alice.send(bob.username, "Lunch at noon? <b>bring</b> the map").status_code == 302
    wait_until(lambda: fake_push.to(device), DELAY + 15, "the push")
    push = fake_push.to(device)[0]
    assert push.problem is None and push.status == 201
    assert push.claims["sub"] == SUBJECT and push.claims["aud"] == fake_push.origin
    assert push.vapid_key == vapid_key, "signed with the key the page subscribed with"
    assert push.json == {
        "title": f"{alice.username} 发来消息",
        "body": "Lunch at noon? <b>bring</b> the map",
        "url": f"/messages/{alice.username}",
        "tag": "messages",
    }
    headers = {k.lower(): v for k, v in push.headers.items()}
    assert int(headers["ttl"]) > 0 and re.fullmatch(r"[0-9a-f]{32}", headers["topic"])


def test_with_a_tab_looking_nothing_is_pushed_and_when_it_hides_the_next_one_is(people, fake_push, push_env):
    alice, bob = people
    device = fake_push.device()
    subscribe(bob, device)
    tab = bob.stream(timeout=15)
    assert bob.script("POST", "/presence", {"looking": True}).status_code == 204
    wait_until(lambda: "Online now" in alice.http.get(f"/user/{bob.username}").text, 10, "bob online")

    before = stats(push_env)
    assert alice.send(bob.username, "you are looking").status_code == 302
    assert tab.next_event("new_message").json["data"]["preview"] == "you are looking"
    outcome(push_env, "looking", before)
    assert fake_push.to(device) == []

    assert bob.script("POST", "/presence", {"looking": False}).status_code == 204
    assert alice.send(bob.username, "now you are not").status_code == 302
    wait_until(lambda: fake_push.to(device), DELAY + 15, "the push once no tab looks")
    assert fake_push.to(device)[0].json["body"] == f"{alice.username}: now you are not"  # 2 unread now
    tab.close()


def test_reading_the_conversation_within_the_delay_means_nothing_is_pushed(people, fake_push, push_env):
    alice, bob = people
    device = fake_push.device()
    subscribe(bob, device)
    before = stats(push_env)
    assert alice.send(bob.username, "read me soon").status_code == 302
    assert "read me soon" in bob.http.get(f"/messages/{alice.username}").text  # opening it reads it
    outcome(push_env, "read", before)
    assert fake_push.to(device) == []


def test_six_quick_messages_make_one_push_with_the_latest(people, fake_push, push_env):
    alice, bob = people
    device = fake_push.device()
    subscribe(bob, device)
    before = stats(push_env)
    for i in range(6):
        assert alice.send(bob.username, f"message {i}").status_code == 302
    wait_until(lambda: fake_push.to(device), DELAY + 15, "the push")
    wait_until(
        lambda: stats(push_env).get("superseded", 0) >= before.get("superseded", 0) + 5, 20, "the rest"
    )
    [push] = fake_push.to(device)
    assert push.json["title"] == "6 new messages" and push.json["body"].endswith("message 5")


def test_a_gone_subscription_is_removed_and_a_busy_push_service_is_tried_again(people, fake_push, push_env):
    alice, bob = people
    gone, busy = fake_push.device(answers=[410]), fake_push.device(answers=[429, 503])
    subscribe(bob, gone)
    subscribe(bob, busy)
    before = stats(push_env)
    assert alice.send(bob.username, "anyone there?").status_code == 302
    outcome(push_env, "gone", before)
    assert gone.endpoint not in devices(push_env, bob.username)
    wait_until(lambda: [p for p in fake_push.to(busy) if p.status == 201], 60, "the push after 429 and 503")
    assert [p.status for p in fake_push.to(busy)] == [429, 503, 201]
    assert busy.endpoint in devices(push_env, bob.username)


def test_a_push_service_that_hangs_costs_a_bounded_time(people, fake_push, push_env):
    alice, bob = people
    slow = fake_push.device(hang=5)
    subscribe(bob, slow)
    before = stats(push_env)
    sent_at = time.monotonic()
    assert alice.send(bob.username, "slow service").status_code == 302
    outcome(push_env, "retried", before)
    # The delay, the 1 s read timeout (PUSH_TIMEOUT_SECONDS) and the scheduler's 1 s tick.
    assert time.monotonic() - sent_at < DELAY + 1 + 3, "the worker gave up on the hanging service"
    slow.hang = 0


def test_a_redirect_is_never_followed_and_a_retry_is_decided_afresh(people, fake_push, push_env):
    alice, bob = people
    moved = fake_push.device(answers=[307])
    subscribe(bob, moved)
    before = stats(push_env)
    assert alice.send(bob.username, "go elsewhere").status_code == 302
    outcome(push_env, "failed", before)
    assert [p.status for p in fake_push.to(moved)] == [307], "nothing went to the Location"
    bob.script("DELETE", "/push/subscriptions", {"endpoint": moved.endpoint})

    busy = fake_push.device(answers=[503])  # Retry-After: 1
    subscribe(bob, busy)
    before = stats(push_env)
    assert alice.send(bob.username, "read before the retry").status_code == 302
    outcome(push_env, "retried", before)
    assert bob.http.get(f"/messages/{alice.username}").status_code == 200  # read meanwhile
    outcome(push_env, "read", before)
    assert [p.status for p in fake_push.to(busy)] == [503], "the retry saw it read and pushed nothing"


def test_subscriptions_off_the_allow_list_or_malformed_are_refused_clearly(people, fake_push, push_env):
    _, bob = people
    good = fake_push.device().subscription()
    cases = {
        "https://evil.example/push/1": 422,
        "http://127.0.0.1/push/1": 422,
        f"https://user:pw@{fake_push.origin.removeprefix('https://')}/push/1": 422,
        "https://a.b.push.example/x": 201,  # a wildcard origin
        "not a url": 422,
    }
    for endpoint, status in cases.items():
        r = bob.script("POST", "/push/subscriptions", {**good, "endpoint": endpoint})
        assert r.status_code == status, (endpoint, r.text)
        if status != 201:
            assert r.json()["error"]
    bad_keys = {**good, "keys": {"p256dh": good["keys"]["p256dh"][:-4], "auth": good["keys"]["auth"]}}
    r = bob.script("POST", "/push/subscriptions", bad_keys)
    assert r.status_code == 400 and "p256dh" in r.json()["error"]
    assert "evil.example" not in " ".join(devices(push_env, bob.username))


def test_logging_out_removes_the_devices_of_that_login(people, fake_push, push_env):
    _, bob = people
    device = fake_push.device()
    subscribe(bob, device)
    assert (
        bob.script("DELETE", "/push/subscriptions", {"endpoint": "https://nope.push.example/1"}).status_code
        == 404
    )
    assert bob.logout().status_code == 302
    assert device.endpoint not in devices(push_env, bob.username)
