"""Any kind of user id: the store, the locks, the channels and publishing after commit work for
string and UUID primary keys as for integers, on SQLite and PostgreSQL; a notify() inside a
savepoint that rolls back is never published; MySQL without a row to lock is refused."""

from __future__ import annotations

import json
import threading
import uuid

import fakeredis
import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_tidings import Kind, NotificationMixin, SQLAlchemyStore, Tidings

KEY_TYPES = {
    "string": (sa.String(32), lambda: uuid.uuid4().hex),
    "uuid": (sa.Uuid(), uuid.uuid4),
    "integer": (sa.Integer(), None),
}


def make_shop(database_url: str, key_type: str, lock_rows: bool):
    """A stranger's app: customers keyed by ``key_type``, notifications with their foreign key."""
    column_type, default = KEY_TYPES[key_type]
    app = Flask(__name__)
    app.config.update(SQLALCHEMY_DATABASE_URI=database_url, REDIS_URL="redis://unused")
    db = SQLAlchemy(app)

    class Customer(db.Model):
        # Not named ``id``: the lock must find the column the foreign key names.
        uid = db.Column(column_type, primary_key=True, default=default)
        name = db.Column(db.String(64))

    class Notification(NotificationMixin, db.Model):
        user_id = db.Column(db.ForeignKey(Customer.uid), index=True)

    store = SQLAlchemyStore(db, Notification, lock_rows_of=Customer if lock_rows else None)
    tidings = Tidings(app, kinds=[Kind("order_shipped", per="order")], store=store)
    redis = fakeredis.FakeRedis()
    tidings.use_redis(app, redis)
    with app.app_context():
        db.create_all()
    return app, db, Customer, Notification, tidings, redis


@pytest.fixture(params=sorted(KEY_TYPES))
def key_type(request) -> str:
    return request.param


@pytest.fixture(params=[True, False], ids=["lock_rows_of", "no_lock_rows_of"])
def shop(request, database_url, key_type):
    app, db, *rest = made = make_shop(database_url, key_type, request.param)
    yield made
    with app.app_context():
        db.drop_all()
        db.engine.dispose()


def customer_ids(app, db, customer, *names):
    with app.app_context():
        people = [customer(name=n) for n in names]
        db.session.add_all(people)
        db.session.commit()
        return [p.uid for p in people]


def published(redis, channel: str):
    pubsub = redis.pubsub()
    pubsub.subscribe(channel)
    pubsub.get_message(timeout=1)
    return pubsub


def messages(pubsub) -> list[dict]:
    out = []
    while (msg := pubsub.get_message(timeout=0.2)) is not None:
        out.append(json.loads(msg["data"]))
    return out


def test_notify_stores_publishes_and_replays_by_any_id(shop, key_type):
    app, db, Customer, Notification, tidings, redis = shop
    (ada_id,) = customer_ids(app, db, Customer, "ada")
    pubsub = published(redis, f"notifications:{ada_id}")
    with app.app_context():
        ada = db.session.get(Customer, ada_id)
        ada.id = ada.uid  # the user object the docs ask for: its ``id``
        event = tidings.notify(ada, "order_shipped", {"order": "A-1"})
        db.session.commit()
        assert tidings.channel(ada_id) == f"notifications:{ada_id}"
        # The engine names the user by str(id); the store answers to either form.
        for who in (ada_id, str(ada_id)):
            assert [e.id for e in tidings.current_store.since_id(who, 0)] == [event.id]
            assert tidings.latest_id(who) == event.id
        row = db.session.scalars(sa.select(Notification)).one()
        assert row.user_id == ada_id and type(row.user_id) is type(ada_id)
    assert [m["data"] for m in messages(pubsub)] == [{"order": "A-1"}]


def test_a_savepoint_rolled_back_publishes_nothing_and_the_rest_still_goes(shop):
    app, db, Customer, Notification, tidings, redis = shop
    (ada_id,) = customer_ids(app, db, Customer, "ada")
    pubsub = published(redis, f"notifications:{ada_id}")
    with app.app_context():
        tidings.notify(ada_id, "order_shipped", {"order": "kept"})
        try:
            with db.session.begin_nested():
                tidings.notify(ada_id, "order_shipped", {"order": "undone"})
                with db.session.begin_nested():  # inside the one that fails: undone with it
                    tidings.notify(ada_id, "order_shipped", {"order": "inner"})
                raise RuntimeError("the payment failed")
        except RuntimeError:
            pass
        with db.session.begin_nested():  # a savepoint that is released: published with the commit
            tidings.notify(ada_id, "order_shipped", {"order": "released"})
        db.session.commit()
        stored = {json.loads(r.payload_json)["order"] for r in db.session.scalars(sa.select(Notification))}
    assert stored == {"kept", "released"}
    assert [m["data"]["order"] for m in messages(pubsub)] == ["kept", "released"]


@pytest.mark.postgres
@pytest.mark.parametrize("lock_rows", [True, False], ids=["lock_rows_of", "advisory"])
def test_one_customers_notifications_are_serialised_on_postgresql(postgres_url, key_type, lock_rows):
    """Two transactions notifying the same customer: the second waits for the first's lock."""
    from tests.conftest import reset_database

    reset_database(postgres_url)
    app, db, Customer, _, tidings, _ = make_shop(postgres_url, key_type, lock_rows)
    (ada_id,) = customer_ids(app, db, Customer, "ada")
    locked, second_done = threading.Event(), threading.Event()

    def second() -> None:
        with app.app_context():
            locked.wait(5)
            tidings.lock(ada_id)
            second_done.set()
            db.session.rollback()

    with app.app_context():
        tidings.lock(ada_id)
        thread = threading.Thread(target=second)
        thread.start()
        locked.set()
        assert not second_done.wait(0.5), "the second transaction waits for the first's lock"
        db.session.commit()
    assert second_done.wait(5), "and goes on once it ends"
    thread.join()
    with app.app_context():
        db.drop_all()
        db.engine.dispose()


def test_mysql_and_mariadb_without_a_row_to_lock_are_refused_with_a_reason(database_url):
    app, db, Customer, Notification, *_ = make_shop(database_url, "string", lock_rows=False)
    for dialect in ("mysql", "mariadb"):
        with pytest.raises(RuntimeError, match="lock_rows_of=User"):
            SQLAlchemyStore(db, Notification)._check_dialect(dialect)
        SQLAlchemyStore(db, Notification, lock_rows_of=Customer)._check_dialect(dialect)
    with app.app_context():
        db.drop_all()
        db.engine.dispose()
