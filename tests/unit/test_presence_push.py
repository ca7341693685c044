"""Presence (flask_tidings/presence.py, POST /presence, the pages) and Web Push's parts that need no
push service: what may be subscribed, the routes, the texts, logout. The push service itself is
tests/integration/test_push.py's; the service worker is tests/e2e/test_push_browser.py's."""

from __future__ import annotations

import json
import re

import fakeredis
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from app.extensions import db
from app.models import Message, Notification, PushSubscription, User
from app.push import sending, subscriptions
from flask_tidings import FailureTally
from flask_tidings.fanout import Fanout, Subscription
from flask_tidings.kinds import SESSION_LOOKING, Kind, Kinds, NotificationRefused, session_tag
from flask_tidings.presence import CHUNK, MemoryPresence, Presence
from harness.fakepush import b64url

ORIGINS = ("https://push.example", "https://*.notify.windows.com")


def keys() -> dict[str, str]:
    point = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    )
    return {"p256dh": b64url(point), "auth": b64url(b"0123456789abcdef")}


def subscription(endpoint: str = "https://push.example/send/abc") -> dict:
    return {"endpoint": endpoint, "expirationTime": None, "keys": keys()}


# -- presence: the rules, in Redis and in memory ------------------------------------------------


@pytest.fixture(params=["redis", "memory"])
def presence(request):
    if request.param == "redis":
        return Presence(fakeredis.FakeRedis(), interval=10)
    return MemoryPresence(interval=10)


def test_a_user_is_online_while_a_worker_vouches_and_offline_two_and_a_half_intervals_after(presence):
    presence.refresh({1, 2}, {2}, now=1000)
    now = presence.of([1, 2, 3], now=1001)
    assert now[1].online and not now[1].looking
    assert now[2].online and now[2].looking
    assert not now[3].online and now[3].last_seen is None
    assert presence.counts(now=1001) == (2, 1)
    later = presence.of([1, 2], now=1000 + 25.5)  # the worker died: no ghost past the TTL
    assert not later[1].online and not later[2].looking and later[1].last_seen == 1000
    assert presence.counts(now=1026) == (0, 0)


def test_one_worker_vouching_late_does_not_lower_another_workers_newer_word(presence):
    presence.refresh({1}, {1}, now=1010)
    presence.refresh({1}, {1}, now=1000)  # an older write arriving after (ZADD GT)
    assert presence.of([1], now=1030)[1].online


def test_a_tab_that_hides_stops_looking_at_once_and_one_that_shows_starts_at_once(presence):
    presence.refresh({1}, {1}, now=1000)
    presence.mark_looking(1, False, now=1001)
    hidden = presence.of([1], now=1001)[1]
    assert not hidden.looking and hidden.online
    assert not hidden.settled, "another device's worker may still say it looks, within an interval"
    presence.refresh({1}, {1}, now=1005)  # it does
    assert presence.of([1], now=1006)[1].looking
    presence.mark_looking(1, False, now=1007)
    assert not presence.of([1], now=1007 + 10)[1].settled, "an interval and the write's own time"
    assert presence.of([1], now=1007 + 16)[1].settled, "nobody said so within 1.5 intervals and 1 s"
    presence.mark_looking(1, True, now=1020)
    assert presence.of([1], now=1020)[1].looking


def test_a_worker_writes_its_users_in_chunks_not_one_command_per_stream():
    client = fakeredis.FakeRedis()
    presence = Presence(client, interval=10)
    users = set(range(CHUNK * 2 + 1))
    assert presence.refresh(users, set(range(10)), now=1000) == 3 + 1 + 3  # 3 + 1 ZADDs, 3 trims
    assert presence.counts(now=1001) == (len(users), 10)


# -- presence: the control message, and POST /presence --------------------------------------------


class Sink:
    def __init__(self):
        self.changes = 0

    def looking_changed(self):
        self.changes += 1

    def send_event(self, event):
        raise AssertionError("a control message is never delivered")


def test_the_looking_control_message_marks_only_that_logins_streams_and_is_never_delivered():
    fanout = Fanout()
    mine, other = Subscription(7, "login-a"), Subscription(7, "login-b")
    for sub in (mine, other):
        fanout.add(sub)
        sub.attach(Sink())
    message = {"name": SESSION_LOOKING, "data": {"session": session_tag("login-a"), "looking": True}}
    fanout.dispatch("notifications:7", json.dumps({**message, "timestamp": 1.0}))
    assert mine.looking and not other.looking and mine._sink.changes == 1
    fanout.dispatch("notifications:7", json.dumps({**message, "timestamp": 1.0}))
    assert mine._sink.changes == 1, "no change, no write"


def test_session_looking_is_reserved():
    with pytest.raises(ValueError):
        Kinds([Kind(SESSION_LOOKING)])
    with pytest.raises(NotificationRefused):
        Kinds().declared(SESSION_LOOKING)


def test_post_presence_needs_a_login_a_token_and_a_boolean(csrf_app, fake_redis):
    client = csrf_app.test_client()
    assert client.post("/presence", json={"looking": True}).status_code == 401
    with csrf_app.app_context():
        user = User(username="ann", email="ann@example.com")
        user.set_password("password123")
        db.session.add(user)
        db.session.commit()
        user_id = user.id
    page = client.get("/auth/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    client.post("/auth/login", data={"username": "ann", "password": "password123", "csrf_token": token})
    meta = re.search(r'<meta name="csrf-token" content="([^"]+)"', client.get("/").get_data(as_text=True))
    headers = {"X-CSRFToken": meta.group(1)}
    assert client.post("/presence", json={"looking": True}).status_code == 400, "no token"
    for bad in ({"looking": "yes"}, {}, [], None):
        r = client.post("/presence", json=bad, headers=headers)
        assert r.status_code == 400 and "looking" in r.get_json()["error"]
    pubsub = fake_redis.pubsub()
    pubsub.subscribe(f"notifications:{user_id}")
    pubsub.get_message(timeout=1)
    assert client.post("/presence", json={"looking": True}, headers=headers).status_code == 204
    said = json.loads(pubsub.get_message(timeout=1)["data"])
    assert said["name"] == SESSION_LOOKING and said["data"]["looking"] is True


def test_profiles_and_the_directory_say_online_now_only_with_a_stream_somewhere(app, client, auth):
    alice, bob = auth.create("alice"), auth.create("bob")
    auth.login("alice")
    page = client.get("/user/bob").get_data(as_text=True)
    assert 'data-online="false"' in page and "Online now" not in page
    from app.notifications import tidings

    with app.app_context():
        app.extensions["tidings"].presence.refresh({bob}, set())
        assert tidings.is_online(bob) and not tidings.is_looking(bob) and not tidings.is_online(alice)
    assert "Online now" in client.get("/user/bob").get_data(as_text=True)
    assert client.get("/users").get_data(as_text=True).count('data-online="true"') == 1


# -- Web Push: what may be subscribed ---------------------------------------------------------------


@pytest.mark.parametrize(
    "endpoint, status",
    [
        ("https://push.example/send/abc", None),
        ("https://PUSH.example:443/x", None),
        ("https://wns2-par02p.notify.windows.com/w/?token=x", None),
        ("https://push.example:8443/x", 422),
        ("https://evil.example/x", 422),
        ("https://push.example.evil.example/x", 422),
        ("https://notify.windows.com.evil/x", 422),
        ("http://push.example/x", 422),
        ("https://me:pw@push.example/x", 422),
        ("https://127.0.0.1\\x.notify.windows.com/a", 422),  # the HTTP client would go to 127.0.0.1
        ("https://push.example/a b", 422),
        ("https://push.example:99999/x", 400),
        ("https://push.example/" + "x" * 1100, 400),
        ("", 400),
    ],
)
def test_only_https_endpoints_of_allowed_push_services_are_taken(endpoint, status):
    if status is None:
        assert subscriptions.parse(subscription(endpoint), ORIGINS).endpoint == endpoint
    else:
        with pytest.raises(subscriptions.Refused) as refused:
            subscriptions.parse(subscription(endpoint), ORIGINS)
        assert refused.value.status == status and str(refused.value)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_any_json_is_taken_or_refused_with_a_message_never_an_error(body):
    for candidate in (
        body,
        {"endpoint": "https://push.example/x", "keys": body},
        {**subscription(), "endpoint": body},
    ):
        try:
            subscriptions.parse(candidate, ORIGINS)
        except subscriptions.Refused as exc:
            assert str(exc) and exc.status in (400, 422)


def test_keys_must_be_a_p256_point_and_a_16_byte_secret():
    good = subscription()
    for name, value in [
        ("p256dh", b64url(b"\x04" + b"\x01" * 64)),
        ("p256dh", "!!"),
        ("auth", b64url(b"short")),
        ("auth", b64url(b"0123456789abcdef") + " " * 40),  # decoders skip what is not base64
    ]:
        with pytest.raises(subscriptions.Refused, match=name):
            subscriptions.parse({**good, "keys": {**good["keys"], name: value}}, ORIGINS)


# -- Web Push: the routes -------------------------------------------------------------------------


def test_the_service_worker_is_served_from_the_root_and_never_cached_stale(client):
    r = client.get("/sw.js")
    assert r.status_code == 200 and r.mimetype == "text/javascript"
    assert r.headers["Cache-Control"] == "no-cache" and b"showNotification" in r.data


def test_subscribing_stores_per_login_updates_the_same_endpoint_and_logout_removes_it(app, client, auth):
    app.config["PUSH_ALLOWED_ORIGINS"] = ORIGINS
    auth.create("alice")
    assert client.post("/push/subscriptions", json=subscription()).status_code == 401
    auth.login("alice")
    first = client.post(
        "/push/subscriptions",
        json=subscription(),
        headers={"User-Agent": "Mozilla/5.0 (Android) Firefox/140.0"},
    )
    assert first.status_code == 201 and first.get_json()["devices"] == 1
    again = client.post("/push/subscriptions", json=subscription())
    assert again.status_code == 201 and again.get_json() == {"id": first.get_json()["id"], "devices": 1}
    r = client.post("/push/subscriptions", json=subscription("https://evil.example/x"))
    assert r.status_code == 422 and "evil.example" in r.get_json()["error"]
    page = client.get("/user/alice").get_data(as_text=True)
    assert 'id="device_list"' in page and "Firefox · Android" not in page  # the second UA replaced it
    assert (
        client.delete("/push/subscriptions", json={"endpoint": "https://push.example/nope"}).status_code
        == 404
    )
    auth.logout()
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(PushSubscription)) == 0


def test_a_device_is_removed_from_the_list_and_another_users_is_untouchable(app, client, auth):
    app.config["PUSH_ALLOWED_ORIGINS"] = ORIGINS
    auth.create("alice"), auth.create("bob")
    bobs_browser = app.test_client()
    bobs_browser.post("/auth/login", data={"username": "bob", "password": auth.password})
    bobs = bobs_browser.post("/push/subscriptions", json=subscription("https://push.example/bob")).get_json()[
        "id"
    ]
    auth.login("alice")
    mine = client.post("/push/subscriptions", json=subscription()).get_json()["id"]
    assert client.post(f"/push/subscriptions/{bobs}/remove").status_code == 302
    assert (
        client.delete("/push/subscriptions", json={"endpoint": "https://push.example/bob"}).status_code == 404
    )
    r = client.post(f"/push/subscriptions/{mine}/remove")
    assert r.status_code == 302 and r.headers["Location"].endswith("/user/alice#devices")
    with app.app_context():
        assert db.session.scalars(sa.select(PushSubscription.endpoint)).all() == ["https://push.example/bob"]


# -- Web Push: what a push says -------------------------------------------------------------------


def test_a_push_says_who_wrote_in_the_users_language_and_nothing_once_read(app, client, auth):
    auth.create("alice"), auth.create("bob")
    auth.login("alice")
    client.post("/messages/bob", data={"message": "see you at 8"})
    with app.app_context():
        bob = db.session.scalar(sa.select(User).where(User.username == "bob"))
        note = db.session.scalar(
            sa.select(Notification).where(Notification.user_id == bob.id, Notification.name == "new_message")
        )
        assert sending.texts(bob, note, None) == {
            "title": "Message from alice",
            "body": "see you at 8",
            "url": "/messages/alice",
            "tag": "messages",
        }
        assert sending.texts(bob, note, "zh_Hans")["title"] == "alice 发来消息", (
            "the device's language, if none saved"
        )
        bob.language = "en"
        assert sending.texts(bob, note, "zh_Hans")["title"] == "Message from alice", "the saved one first"
        db.session.execute(sa.update(Message).values(read_at=sa.func.now()))
        assert sending.texts(bob, note, None) is None
    assert re.fullmatch(r"[0-9a-f]{32}", sending.topic_of("conversation:" + "x" * 500))


def test_an_endpoint_another_user_had_starts_afresh_and_logout_keeps_other_logins_devices(app, client, auth):
    app.config["PUSH_ALLOWED_ORIGINS"] = ORIGINS
    auth.create("alice"), auth.create("bob")
    shared = subscription("https://push.example/shared-browser")
    bobs_browser = app.test_client()
    bobs_browser.post("/auth/login", data={"username": "bob", "password": auth.password})
    bobs = bobs_browser.post("/push/subscriptions", json=shared).get_json()["id"]
    laptop = app.test_client()
    laptop.post("/auth/login", data={"username": "bob", "password": auth.password})
    laptop.post("/push/subscriptions", json=subscription("https://push.example/bobs-laptop"))

    auth.login("alice")  # on the browser bob used: it subscribes again, as alice
    alices = client.post("/push/subscriptions", json=shared).get_json()["id"]
    assert alices != bobs, "a new row: nothing queued for bob can reach alice's notifications"
    assert bobs_browser.post("/auth/logout").status_code == 302
    with app.app_context():
        rows = db.session.execute(
            sa.select(User.username, PushSubscription.endpoint).join(
                User, User.id == PushSubscription.user_id
            )
        ).all()
    assert sorted(rows) == [("alice", shared["endpoint"]), ("bob", "https://push.example/bobs-laptop")]


# -- configuration and metrics ----------------------------------------------------------------------


def test_the_vapid_key_is_made_once_and_kept_and_a_given_one_must_be_a_p256_key(tmp_path):
    from app.config import vapid_subject
    from app.push import keys

    made = keys.load(None, str(tmp_path))
    again = keys.load(None, str(tmp_path))
    assert (
        made.private_pem() == again.private_pem()
        and (tmp_path / keys.KEY_FILE).stat().st_mode & 0o777 == 0o600
    )
    assert keys.load(made.private_pem().decode(), "/nonexistent").private_pem() == made.private_pem()
    with pytest.raises(RuntimeError, match="VAPID_PRIVATE_KEY"):
        keys.load("not a key", str(tmp_path))
    assert vapid_subject(None, "https://tidings.example", "x") == "https://tidings.example"
    assert vapid_subject(None, None, "Tidings <ops@tidings.example>") == "mailto:ops@tidings.example"
    for bad in ("ops@tidings.example", "http://tidings.example", "mailto:nobody"):
        with pytest.raises(RuntimeError, match="VAPID_SUBJECT"):
            vapid_subject(bad, None, "x")


def test_metrics_show_users_connected_and_looking_and_pushes_by_outcome(app, client, auth):
    alice = auth.create("alice")
    with app.app_context():
        app.extensions["tidings"].presence.refresh({alice}, {alice})
        sending.count("sent")
    text = client.get("/metrics").get_data(as_text=True)
    assert "tidings_users_connected 1.0" in text and "tidings_users_looking 1.0" in text
    assert (
        'tidings_push_total{outcome="sent"} 1.0' in text and 'tidings_push_total{outcome="gone"} 0.0' in text
    )


def test_a_send_while_the_queue_is_away_still_sends_and_says_so_once(app, client, auth, monkeypatch, caplog):
    import redis as redis_py

    app.config["PUSH_ALLOWED_ORIGINS"] = ORIGINS
    auth.create("alice"), auth.create("bob")
    bobs_browser = app.test_client()
    bobs_browser.post("/auth/login", data={"username": "bob", "password": auth.password})
    assert bobs_browser.post("/push/subscriptions", json=subscription()).status_code == 201

    def away():
        raise redis_py.ConnectionError("Connection refused")

    monkeypatch.setattr(sending, "task_queue", away)
    monkeypatch.setattr(sending, "_queue_failures", FailureTally(sending.log, "queue a push"))
    auth.login("alice")
    for text in ("one", "two", "three"):
        assert client.post("/messages/bob", data={"message": text}).status_code == 302
    lines = [r for r in caplog.records if "queue a push" in r.getMessage()]
    assert len(lines) == 1 and not any(r.exc_info for r in caplog.records)
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Message)) == 3
