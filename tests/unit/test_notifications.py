"""The notification store, publishing after commit, and GET /notifications."""

import json
import logging
import time

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import Notification, User
from app.notifications import tidings


def notify(user, name, data):
    """Store and commit, as a job does."""
    event = tidings.notify(user, name, data)
    db.session.commit()
    return event


@pytest.fixture
def users(auth):
    return {"alice": auth.create("alice"), "bob": auth.create("bob")}


def test_notify_replaces_the_previous_one_of_that_name_with_a_growing_id(app, users):
    with app.app_context():
        bob = db.session.get(User, users["bob"])
        first = notify(bob, "unread_message_count", 1)
        second = notify(bob, "unread_message_count", 2)
        third = notify(bob, "unread_message_count", 3)
        rows = db.session.scalars(sa.select(Notification).where(Notification.user_id == bob.id)).all()
        # One row per name, and the id never reused (SQLite would reuse the max rowid).
        assert [r.to_event().data for r in rows] == [3]
        assert first.id < second.id < third.id == rows[0].id


def test_task_progress_of_two_tasks_is_kept_apart(app, users):
    with app.app_context():
        bob = db.session.get(User, users["bob"])
        notify(bob, "task_progress", {"task_id": "a", "progress": 10})
        notify(bob, "task_progress", {"task_id": "b", "progress": 50})
        notify(bob, "task_progress", {"task_id": "a", "progress": 20})
        rows = db.session.scalars(sa.select(Notification).order_by(Notification.id)).all()
        assert [(r.to_event().data["task_id"], r.to_event().data["progress"]) for r in rows] == [
            ("b", 50),
            ("a", 20),
        ]


def test_sending_a_message_publishes_the_count_after_commit(client, auth, users, fake_redis):
    pubsub = fake_redis.pubsub()
    pubsub.subscribe(f"notifications:{users['bob']}")
    pubsub.get_message(timeout=1)  # subscribe confirmation
    auth.login("alice")
    client.post("/send_message/bob", data={"message": "hello"})
    published = []
    while (msg := pubsub.get_message(timeout=0.5)) is not None:
        published.append(json.loads(msg["data"]))
    names = [p["name"] for p in published]
    assert names == ["unread_message_count", "new_message", "conversation"]
    count = published[0]
    assert count["data"] == 1 and isinstance(count["id"], int) and isinstance(count["timestamp"], float)
    assert published[1]["data"]["sender"] == "alice" and published[1]["data"]["preview"] == "hello"
    # Seed bug `add_notification` on the wrong model: the count is the recipient's; the sender
    # is told only that her conversation moved.
    assert [n["name"] for n in client.get("/notifications?since=0").get_json()] == ["conversation"]


def test_nothing_is_published_when_the_transaction_rolls_back(app, users, fake_redis):
    pubsub = fake_redis.pubsub()
    pubsub.psubscribe("notifications:*")
    pubsub.get_message(timeout=1)
    with app.app_context():
        bob = db.session.get(User, users["bob"])
        tidings.notify(bob, "unread_message_count", 5)
        db.session.rollback()
        assert db.session.scalar(sa.select(sa.func.count(Notification.id))) == 0
    assert pubsub.get_message(timeout=0.3) is None


def test_send_succeeds_and_warns_when_redis_is_down(client, auth, users, app, caplog):
    tidings.use_redis(app, None)  # the app's own client, on a port where nothing listens
    with app.app_context():
        assert tidings.redis.connection_pool.connection_kwargs["port"] == 1
    auth.login("alice")
    with caplog.at_level(logging.WARNING, logger="flask_tidings.extension"):
        r = client.post("/send_message/bob", data={"message": "during an outage"})
    assert r.status_code == 302
    assert "could not publish to Redis" in caplog.text
    auth.logout()
    auth.login("bob")
    events = client.get("/notifications?since=0").get_json()
    assert [e["name"] for e in events] == ["unread_message_count", "new_message", "conversation"]
    assert b"during an outage" in client.get("/messages/alice").data


def test_notifications_since_returns_newer_ones_oldest_first(client, auth, users, app):
    with app.app_context():
        bob = db.session.get(User, users["bob"])
        a = notify(bob, "announcement", "first")
        b = notify(bob, "task_progress", {"task_id": "t", "progress": 5, "x": [1, 2]})
    auth.login("bob")
    body = client.get("/notifications?since=0").get_json()
    assert body == [a.to_dict(), b.to_dict()]
    # Seed bug `filter_by(Notification.timestamp > since)`: the filter really filters.
    assert client.get(f"/notifications?since={a.timestamp}").get_json() == [b.to_dict()]
    assert client.get(f"/notifications?since={b.timestamp}").get_json() == []
    assert client.get("/notifications").get_json() == body


@pytest.mark.parametrize("since", ["abc", "nan", "inf", "1e999", ""])
def test_notifications_bad_since_is_400_json(client, auth, users, since):
    auth.login("bob")
    r = client.get("/notifications", query_string={"since": since})
    assert r.status_code == 400 and "since" in r.get_json()["error"]


@pytest.mark.parametrize("path", ["/notifications?since=0", "/stream"])
def test_anonymous_json_routes_get_401_json_not_a_redirect(client, path):
    r = client.get(path)
    assert r.status_code == 401
    assert r.is_json and "log in" in r.get_json()["error"]


def test_stream_refuses_a_server_without_gevent(client, auth, users):
    # The test client is a plain threaded server: exactly the classic mistake.
    auth.login("bob")
    r = client.get("/stream")
    assert r.status_code == 503
    assert "gunicorn -c gunicorn.conf.py wsgi:app" in r.get_json()["error"]


def test_stream_rejects_a_malformed_cursor(client, auth, users):
    auth.login("bob")
    r = client.get("/stream?last_event_id=abc")
    assert r.status_code == 400 and r.is_json
    r = client.get("/stream", headers={"Last-Event-ID": "-5"})
    assert r.status_code == 400


def test_cli_notify_stores_and_publishes(runner, users, fake_redis, app):
    pubsub = fake_redis.pubsub()
    pubsub.subscribe(f"notifications:{users['bob']}")
    pubsub.get_message(timeout=1)
    result = runner.invoke(args=["notify", "bob", "announcement", '{"text": "hi"}'])
    assert result.exit_code == 0, result.output
    msg = json.loads(pubsub.get_message(timeout=1)["data"])
    assert msg["name"] == "announcement" and msg["data"] == {"text": "hi"}
    with app.app_context():
        assert db.session.scalar(sa.select(Notification.name)) == "announcement"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["notify", "nobody", "x", "1"], "no user named 'nobody'"),
        (["notify", "bob", "x", "{not json"], "not valid JSON"),
        (["notify", "bob", "x", "NaN"], "NaN is not allowed"),
        (["notify", "bob", "bad\nname", "1"], "not a declared notification kind"),
    ],
)
def test_cli_notify_errors_are_clear_and_nonzero(runner, users, args, message, app):
    result = runner.invoke(args=args)
    assert result.exit_code != 0 and message in result.output
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Notification.id))) == 0


def test_flask_shell_knows_db_and_models(app):
    with app.app_context():
        context = app.make_shell_context()
    for name in ("db", "User", "Message", "Notification", "Task"):
        assert name in context


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("announcement", '{"x": [1, 2]}', None),
        ("never_declared", "{}", "not a declared notification kind"),
        ("session_ended", '{"session": "x"}', "is reserved"),
        ("announcement", "1e999", "out of range"),
        ("announcement", "NaN", "not allowed"),
        ("announcement", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("announcement", '"' + "x" * 70_000 + '"', "bytes of JSON"),
    ],
    ids=["declared", "undeclared", "reserved", "1e999", "NaN", "deep", "too big"],
)
def test_flask_notify_refuses_what_must_not_be_stored_with_a_message(runner, app, users, name, data, message):
    result = runner.invoke(args=["notify", "bob", name, data])
    if message is None:
        assert result.exit_code == 0, result.output
        return
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Notification.id))) == 0, "nothing half-written"


def test_repeated_publish_failures_are_summed_up_not_logged_each(caplog):
    from flask_tidings.tally import FailureTally

    tally = FailureTally(logging.getLogger("tally-test"), "publish to Redis", interval=0.05)
    with caplog.at_level(logging.INFO, logger="tally-test"):
        for _ in range(200):
            tally.failed(ConnectionError("Connection refused"))
        time.sleep(0.06)
        tally.failed(ConnectionError("Connection refused"))
        tally.succeeded()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("could not publish to Redis: Connection refused")
    assert "200 more times" in lines[1] and "Connection refused" in lines[1]
    assert lines[2] == "could publish to Redis again"
