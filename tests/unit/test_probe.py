"""What a black-box security probe found, each closed: ids past PostgreSQL's integer in a URL,
bidi controls in what others read, stored service notifications without bounds."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("number", [2**31, 2**63, 10**30])
@pytest.mark.parametrize("path", ["/notifications/{}/dismiss", "/push/subscriptions/{}/remove"])
def test_an_id_past_the_database_integer_is_a_404_not_a_500(client, auth, path, number):
    auth.create("alice")
    auth.login("alice")
    answer = client.post(path.format(number))
    assert answer.status_code == 404
    assert client.post(path.format(2**31 - 1)).status_code < 500, "the largest id is an unknown one"


RLO, LRI, PDI = "\u202e", "\u2066", "\u2069"


@pytest.mark.parametrize(
    "body",
    [
        f"see https://evil.example/{RLO}moc.elgoog",
        f"from {RLO}nimda{PDI} with love",
        f"{LRI}https://a.example/x{PDI} and {RLO}",
    ],
)
def test_bidi_controls_never_reach_a_page_a_toast_or_a_push(body):
    from app.text import linkify, preview

    shown = str(linkify(body)) + preview(body)
    assert not any(c in shown for c in (RLO, LRI, PDI))


def test_a_message_with_an_override_reads_as_written_in_the_thread(client, auth):
    auth.create("alice")
    auth.create("bob")
    auth.login("alice")
    client.post("/send_message/bob", data={"message": f"pay at https://bank.example/{RLO}lp.evil"})
    page = client.get("/messages/bob").get_data(as_text=True)
    assert "https://bank.example/lp.evil" in page and RLO not in page
    assert 'class="card-text mb-1 message-body" dir="auto"' in page


def test_someone_elses_push_endpoint_moves_only_with_its_keys(app, client, auth):
    """Posting bob's endpoint with keys of one's own would take his device over: a 409. The same
    subscription (a browser bob and alice share) moves to whoever signs in on it."""
    import sqlalchemy as sa

    from app.extensions import db
    from app.models import PushSubscription
    from tests.unit.test_presence_push import ORIGINS, subscription

    app.config["PUSH_ALLOWED_ORIGINS"] = ORIGINS
    auth.create("alice"), auth.create("bob")
    bobs_browser = app.test_client()
    bobs_browser.post("/auth/login", data={"username": "bob", "password": auth.password})
    bobs = subscription("https://push.example/bob")
    assert bobs_browser.post("/push/subscriptions", json=bobs).status_code == 201
    auth.login("alice")
    stolen = client.post("/push/subscriptions", json=subscription("https://push.example/bob"))
    assert stolen.status_code == 409 and "another account" in stolen.get_json()["error"]

    def owner():
        with app.app_context():
            return db.session.scalar(
                sa.select(PushSubscription.user_id).where(PushSubscription.endpoint == bobs["endpoint"])
            )

    bob_id = owner()
    assert bob_id is not None, "bob's device is untouched"
    shared = client.post("/push/subscriptions", json=bobs)
    assert shared.status_code == 201 and owner() != bob_id


def kinds_app_config(config, tmp_path, **settings):
    import json

    path = tmp_path / "kinds.json"
    path.write_text(json.dumps({"build_finished": {"per": "build", "title": "Build {build}", **settings}}))
    return {**config, "NOTIFICATION_KINDS_FILE": str(path)}


def make_key(app, kinds="build_finished"):
    from app.api.keys import create
    from app.extensions import db

    with app.app_context():
        secret = create("ci", kinds.split(","))[1]
        db.session.commit()
        return secret


@pytest.fixture
def api(config, fake_redis, tmp_path):
    from tests.conftest import build_app, dispose

    app = build_app(kinds_app_config(config, tmp_path, keep=3), fake_redis)
    yield app
    dispose(app)


def test_a_service_cannot_grow_a_users_store_past_its_kinds_keep(api):
    import sqlalchemy as sa

    from app.extensions import db
    from app.models import Notification
    from tests.conftest import AuthActions

    client = api.test_client()
    AuthActions(api, client).create("bob")
    secret = make_key(api)
    for n in range(8):
        r = client.post(
            "/api/v1/notifications",
            json={"to": "bob", "kind": "build_finished", "data": {"build": f"b{n}"}},
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert r.status_code == 201
    with api.app_context():
        kept = db.session.scalars(sa.select(Notification.payload_json).order_by(Notification.id)).all()
    assert [p for p in kept] == [f'{{"build": "b{n}"}}' for n in (5, 6, 7)], "the newest three"


def test_service_data_is_capped_and_a_batch_counts_each_recipient_against_the_rate(api):
    from tests.conftest import AuthActions

    client = api.test_client()
    auth = AuthActions(api, client)
    for name in ("ann", "bea", "cat"):
        auth.create(name)
    secret = make_key(api)
    headers = {"Authorization": f"Bearer {secret}"}
    big = client.post(
        "/api/v1/notifications",
        json={"to": "ann", "kind": "build_finished", "data": {"build": "x", "log": "y" * 9000}},
        headers=headers,
    )
    assert big.status_code == 422 and "at most 8192" in big.get_json()["error"]
    api.config["API_RATE"] = "4 per minute"
    batch = {"to": ["ann", "bea", "cat"], "kind": "build_finished", "data": {"build": "1"}}
    assert client.post("/api/v1/notifications", json=batch, headers=headers).status_code == 201
    again = client.post("/api/v1/notifications", json=batch, headers=headers)
    assert again.status_code == 429, "three and three are over four a minute"
