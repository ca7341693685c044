"""The publish API: keys, kinds from a file, batches, idempotency, and every refusal a clear 4xx
that stores nothing."""

from __future__ import annotations

import json
import threading

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import ApiKey, IdempotentRequest, Notification
from app.service_kinds import KindsFileError, parse
from tests.conftest import build_app, dispose

KINDS_FILE = {
    "build_finished": {
        "per": "build",
        "title": "Build {build} finished",
        "body": "{result} in {seconds} s",
        "link": "/builds/{build}",
    },
    "deploy_done": {"title": "Deployed {service}"},
}


@pytest.fixture
def config(config, tmp_path):
    path = tmp_path / "kinds.json"
    path.write_text(json.dumps(KINDS_FILE))
    return {**config, "NOTIFICATION_KINDS_FILE": str(path), "API_RATE": "1000 per minute"}


@pytest.fixture
def people(auth):
    return {name: auth.create(name) for name in ("alice", "bob", "carol")}


@pytest.fixture
def key(app, runner):
    """A key for build_finished, made through the CLI; its token."""
    result = runner.invoke(args=["keys", "create", "ci-bot", "--kinds", "build_finished"])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("tid_")
    return token


def post(client, token, body, **headers):
    return client.post(
        "/api/v1/notifications",
        data=body if isinstance(body, (str, bytes)) else json.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json", **headers},
    )


def stored(app, name="build_finished") -> int:
    with app.app_context():
        return db.session.scalar(sa.select(sa.func.count(Notification.id)).where(Notification.name == name))


BUILD = {"to": "alice", "kind": "build_finished", "data": {"build": "42", "result": "passed", "seconds": 73}}


def test_a_key_publishes_and_the_notification_is_stored_and_published(client, app, key, people, fake_redis):
    pubsub = fake_redis.pubsub()
    pubsub.subscribe(f"notifications:{people['alice']}")
    pubsub.get_message(timeout=1)
    r = post(client, key, BUILD)
    assert r.status_code == 201
    (published,) = r.get_json()["notifications"]
    assert published["to"] == "alice" and isinstance(published["id"], int)
    event = json.loads(pubsub.get_message(timeout=1)["data"])
    assert event["id"] == published["id"] and event["data"] == BUILD["data"]
    assert stored(app) == 1
    with app.app_context():
        assert db.session.scalar(sa.select(ApiKey.last_used_at)) is not None
    # Kept per build: another build is a second notification, the same build replaces it.
    post(client, key, {**BUILD, "data": {"build": "43"}})
    post(client, key, {**BUILD, "data": {"build": "43", "result": "failed"}})
    assert stored(app) == 2


def test_a_batch_is_all_or_nothing_and_names_the_unknown_recipient(client, app, key, people):
    r = post(client, key, {**BUILD, "to": ["alice", "nobody", "bob"]})
    assert r.status_code == 422 and r.get_json()["to"] == "nobody" and "nobody" in r.get_json()["error"]
    assert stored(app) == 0
    r = post(client, key, {**BUILD, "to": ["alice", "bob", "alice"]})
    assert r.status_code == 201
    assert [n["to"] for n in r.get_json()["notifications"]] == ["alice", "bob"], "once each, in order"
    r = post(client, key, {**BUILD, "to": [f"user{i:03}" for i in range(101)]})
    assert r.status_code == 422 and r.get_json()["field"] == "to"


def test_a_repeated_idempotency_key_answers_the_same_and_stores_nothing(client, app, key, people):
    first = post(client, key, BUILD, **{"Idempotency-Key": "build-42"})
    again = post(client, key, BUILD, **{"Idempotency-Key": "build-42"})
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert stored(app) == 1
    other = post(client, key, {**BUILD, "to": "bob"}, **{"Idempotency-Key": "build-42"})
    assert other.status_code == 422 and "another request" in other.get_json()["error"]
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(IdempotentRequest.id))) == 1


@pytest.mark.postgres
def test_racing_repeats_store_once(config, fake_redis, postgres_url, tmp_path):
    from tests.conftest import AuthActions, reset_database

    reset_database(postgres_url)
    app = build_app({**config, "SQLALCHEMY_DATABASE_URI": postgres_url}, fake_redis)
    try:
        AuthActions(app, app.test_client()).create("alice")
        token = app.test_cli_runner().invoke(args=["keys", "create", "racer", "--kinds", "build_finished"])
        token = token.stdout.strip().splitlines()[-1]
        answers = []

        def send():
            answers.append(post(app.test_client(), token, BUILD, **{"Idempotency-Key": "race"}))

        threads = [threading.Thread(target=send) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert {r.status_code for r in answers} <= {201, 409}
        ids = {json.dumps(r.get_json()) for r in answers if r.status_code == 201}
        assert len(ids) == 1, "every answer is the first one"
        assert stored(app) == 1
    finally:
        dispose(app)


def test_keys_are_limited_to_their_kinds_and_recipients(client, app, runner, key, people):
    r = post(client, key, {"to": "alice", "kind": "unread_message_count", "data": 5})
    assert r.status_code == 403 and r.get_json()["field"] == "kind"
    r = post(client, key, {"to": "alice", "kind": "no_such_kind"})
    assert r.status_code == 403 and "may not send" in r.get_json()["error"]
    out = runner.invoke(args=["keys", "create", "only-bob", "--kinds", "deploy_done", "--to", "bob"])
    narrow = out.stdout.strip().splitlines()[-1]
    r = post(client, narrow, {"to": ["bob", "carol"], "kind": "deploy_done", "data": {"service": "x"}})
    assert r.status_code == 403 and r.get_json()["to"] == "carol"
    assert stored(app, "deploy_done") == 0


def test_missing_wrong_and_revoked_keys_get_401(client, app, runner, key, people):
    assert post(client, "", BUILD).status_code == 401
    assert post(client, key[:-1] + ("A" if key[-1] != "A" else "B"), BUILD).status_code == 401
    assert client.post("/api/v1/notifications", json=BUILD).status_code == 401
    assert runner.invoke(args=["keys", "revoke", "ci-bot"]).exit_code == 0
    r = post(client, key, BUILD)
    assert r.status_code == 401 and "error" in r.get_json()
    listing = runner.invoke(args=["keys", "list"]).stdout
    assert "ci-bot" in listing and "revoked" in listing and key.split("_")[-1] not in listing
    with app.app_context():
        secret_hash = db.session.scalar(sa.select(ApiKey.secret_hash))
    assert key.split("_")[-1] not in secret_hash, "only a hash is kept"


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        ("{not json", {}, 400),
        ('{"to": "alice", "kind": "build_finished", "data": NaN}', {}, 400),
        ('{"to": "alice", "kind": "build_finished", "data": 1e999}', {}, 400),
        ("[" * 20_000 + "]" * 20_000, {}, 400),
        ("[1, 2]", {}, 422),
        ('{"to": "alice", "kind": "build_finished", "extra": 1}', {}, 422),
        ('{"to": "al ice", "kind": "build_finished"}', {}, 422),
        ('{"to": [], "kind": "build_finished"}', {}, 422),
        (json.dumps(BUILD), {"Content-Type": "text/plain"}, 415),
        (json.dumps(BUILD), {"Idempotency-Key": "has space"}, 400),
        (json.dumps({**BUILD, "data": "x" * 70_000}), {}, 413),
    ],
    ids=[
        "syntax",
        "NaN",
        "1e999",
        "deep",
        "array",
        "extra",
        "bad-name",
        "empty-batch",
        "text",
        "idem",
        "big",
    ],
)
def test_bad_requests_get_a_clear_4xx_and_store_nothing(client, app, key, people, body, headers, status):
    r = post(client, key, body, **headers)
    assert r.status_code == status, r.get_data(as_text=True)[:300]
    assert isinstance(r.get_json()["error"], str) and r.get_json()["error"]
    assert stored(app) == 0


def test_over_the_rate_limit_is_429_with_retry_after(client, app, key, people):
    app.config["API_RATE"] = "2 per minute"
    assert post(client, key, BUILD).status_code == 201
    assert post(client, key, BUILD).status_code == 201
    r = post(client, key, BUILD)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0 and "error" in r.get_json()


def test_the_openapi_document_describes_the_route(client):
    doc = client.get("/api/v1/openapi.json").get_json()
    operation = doc["paths"]["/api/v1/notifications"]["post"]
    assert {"201", "400", "401", "403", "413", "415", "422", "429"} <= set(operation["responses"])
    assert set(doc["components"]["schemas"]["PublishRequest"]["properties"]) == {"to", "kind", "data"}


def test_publishes_are_counted_per_key_and_outcome(client, app, key, people):
    post(client, key, BUILD)
    post(client, key, {**BUILD, "to": "nobody"})
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'tidings_api_publishes_total{key="ci-bot",outcome="created"}' in metrics
    assert 'tidings_api_publishes_total{key="ci-bot",outcome="422"}' in metrics


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[]", "JSON object"),
        ('{"x": {"body": "b"}}', "at least a title"),
        ('{"x": {"title": "t", "colour": "red"}}', "unknown setting"),
        ('{"x": {"title": "t", "link": "//evil.test/{a}"}}', "path on this site"),
        ('{"x": {"title": "t", "link": "http://plain.test/"}}', "https"),
        ('{"x": {"title": "{a.b}"}}', "one data field"),
        ('{"x": {"title": "t", "per": 3}}', "per must"),
        ("{oops", "not JSON"),
    ],
)
def test_a_kinds_file_that_cannot_be_used_says_why(text, problem):
    with pytest.raises(KindsFileError, match=problem):
        parse(text)


def test_a_kinds_file_may_not_redefine_a_site_kind(config, fake_redis, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"new_message": {"title": "hijack"}}')
    with pytest.raises(KindsFileError, match="site's own"):
        build_app({**config, "NOTIFICATION_KINDS_FILE": str(path)}, fake_redis)


def test_a_page_shows_stored_service_notifications_until_dismissed(client, app, auth, key, people):
    post(client, key, BUILD)
    auth.login("alice")
    page = client.get("/").get_data(as_text=True)
    block = page.split('id="service_notifications"')[1].split(">", 1)[1].split("</script>")[0]
    shown = json.loads(block)
    assert shown["kinds"]["build_finished"]["title"] == "Build {build} finished"
    (pending,) = shown["pending"]
    assert client.post(f"/notifications/{pending['id']}/dismiss").status_code == 204
    assert (
        json.loads(
            client.get("/")
            .get_data(as_text=True)
            .split('id="service_notifications"')[1]
            .split(">", 1)[1]
            .split("</script>")[0]
        )["pending"]
        == []
    )


def test_any_per_value_fits_the_store(client, app, key, people):
    for value in ("x" * 5000, "nul\u0000byte", "line\nbreak", 12.5):
        r = post(client, key, {**BUILD, "data": {"build": value}})
        assert r.status_code == 201, r.get_data(as_text=True)
    assert stored(app) == 4
    assert post(client, key, {**BUILD, "data": {"build": "x" * 5000}}).status_code == 201
    assert stored(app) == 4, "the same long value is the same key: it replaces"


def test_keys_are_only_for_services_kinds(runner, app):
    result = runner.invoke(args=["keys", "create", "faker", "--kinds", "new_message"])
    assert result.exit_code != 0 and "site kinds are not for keys" in result.output


def test_made_up_keys_are_limited_by_address_and_spend_no_real_key(client, app, key, people):
    app.config["API_RATE"] = "2 per minute"
    fake = "tid_" + key.split("_")[1] + "_" + "A" * 43  # a real key's prefix, a wrong secret
    for _ in range(2):
        assert post(client, fake, BUILD).status_code == 401
    assert post(client, fake, BUILD).status_code == 429, "made-up keys share the address's limit"
    assert post(client, key, BUILD).status_code == 201, "the real key's own count is untouched"


def test_a_kind_name_the_api_cannot_take_is_refused_at_start():
    with pytest.raises(KindsFileError, match="name"):
        parse('{"a,b": {"title": "t"}}')
