"""The fan-out on the in-memory backend (memory://): notify → commit → publish → the user's
subscriptions, with the parsing and control messages Redis' messages get, and no Redis."""

from __future__ import annotations

import logging
import uuid

import pytest

from app import create_app
from app.extensions import db
from app.models import User
from app.notifications import tidings


@pytest.fixture
def memory_app(config):
    app = create_app({**config, "TIDINGS_REDIS_URL": f"memory://{uuid.uuid4().hex}"})
    with app.app_context():
        db.create_all()
        db.session.add_all([User(username=n, email=f"{n}@example.com", password_hash="x") for n in "ab"])
        db.session.commit()
        yield app
        db.session.remove()
        db.engine.dispose()


def hub(app):
    return app.extensions["tidings"].hub


def test_a_committed_notification_reaches_every_stream_of_its_user_and_no_other(memory_app):
    a1, a2, b = (
        hub(memory_app).subscribe(1, "x"),
        hub(memory_app).subscribe(1, "y"),
        hub(memory_app).subscribe(2),
    )
    event = tidings.notify(1, "unread_message_count", 3)
    assert a1.take_pending() == [] and a2.take_pending() == [], "nothing before the commit"
    db.session.commit()
    assert [e.id for e in a1.take_pending()] == [event.id] == [e.id for e in a2.take_pending()]
    assert b.take_pending() == []


def test_a_rolled_back_notification_reaches_nobody(memory_app):
    sub = hub(memory_app).subscribe(1)
    tidings.notify(1, "unread_message_count", 3)
    db.session.rollback()
    assert sub.take_pending() == []


def test_ending_a_login_closes_its_streams_only_and_ending_a_user_closes_all(memory_app):
    first, second = hub(memory_app).subscribe(1, "login-1"), hub(memory_app).subscribe(1, "login-2")
    tidings.end_login(1, "login-1")
    assert first.closed and not second.closed
    tidings.end_user(1)
    assert second.closed
    assert first.take_pending() == [] and second.take_pending() == [], "control messages are never offered"


def test_a_message_that_is_not_a_notification_is_dropped_and_the_next_one_arrives(memory_app, caplog):
    from flask_tidings.memory import MemoryBroker

    sub = hub(memory_app).subscribe(1)
    broker = MemoryBroker.named(memory_app.config["TIDINGS_REDIS_URL"])
    with caplog.at_level(logging.WARNING):
        broker.publish("notifications:1", b"\xff not json")
        broker.publish("notifications:1", '{"name": "announcement", "data": NaN}')
    assert "dropped a message" in caplog.text
    tidings.publish(1, "announcement", "still here")
    assert [(e.name, e.data, e.id) for e in sub.take_pending()] == [("announcement", "still here", None)]


def test_stored_kinds_keep_their_key_across_the_channel(memory_app):
    sub = hub(memory_app).subscribe(1)
    tidings.notify(1, "task_progress", {"task_id": "t1", "progress": 5})
    db.session.commit()
    [event] = sub.take_pending()
    assert event.key == "task_progress:t1"
