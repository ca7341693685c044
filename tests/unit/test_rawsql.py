"""The stream connect's two queries on the driver's cursor (flask_tidings/rawsql.py): the same answers as
SQLAlchemy, and SQLAlchemy's errors when the database fails (so a stream is a 503, not a 500)."""

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from app.extensions import db
from app.models import Login, User, user_id_of_login
from app.notifications import tidings
from flask_tidings.rawsql import RawSelect


def notify(user, name, data):
    tidings.notify(user, name, data)
    db.session.commit()


def stored_events(user_id, since_id=0):
    return tidings.current_store.since_id(user_id, since_id)


def test_answers_match_sqlalchemy_core(app, auth):
    alice = auth.create("alice")
    auth.login("alice")
    with app.app_context():
        token = db.session.scalar(sa.select(Login.token).where(Login.user_id == alice))
        assert user_id_of_login(token) == alice
        assert user_id_of_login("no such login") is None
        user = db.session.get(User, alice)
        notify(user, "unread_message_count", 3)
        notify(user, "unread_message_count", 4)  # replaces the row: one stored event, the last
        notify(user, "task_progress", {"task_id": "t1", "progress": 50})
        events = stored_events(alice)
        assert [(e.name, e.data) for e in events] == [
            ("unread_message_count", 4),
            ("task_progress", {"task_id": "t1", "progress": 50}),
        ]
        assert [e.id for e in stored_events(alice, events[0].id)] == [events[1].id]
        assert stored_events(alice, events[1].id) == []

        db.session.execute(sa.update(Login).values(revoked_at=sa.func.now()))
        db.session.commit()
        assert user_id_of_login(token) is None


def test_a_failing_query_is_sqlalchemys_error_with_its_statement(app):
    query = RawSelect(sa.select(sa.column("x")).select_from(sa.table("no_such_table")))
    with app.app_context(), pytest.raises(sa.exc.DBAPIError) as caught:
        query.rows(db.engine)
    assert "no_such_table" in str(caught.value) and caught.value.statement


@pytest.mark.parametrize(
    "url", ["sqlite:///{tmp}/missing/x.db", "postgresql+psycopg://postgres@127.0.0.1:1/test"]
)
def test_an_unreachable_database_is_sqlalchemys_operational_error(url, tmp_path):
    engine = sa.create_engine(url.format(tmp=tmp_path), poolclass=NullPool)
    with pytest.raises(sa.exc.OperationalError):
        RawSelect(sa.select(sa.text("1"))).rows(engine)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_stream_asked_while_the_database_fails_is_a_503(app, client, auth, expect_log):
    expect_log("database")
    auth.create("alice")
    auth.login("alice")
    with app.app_context():
        Login.__table__.drop(db.engine)  # SQLite: every login lookup is an OperationalError now
    r = client.get("/stream", headers={"Accept": "text/event-stream"})
    assert r.status_code == 503 and r.headers["Retry-After"]


@pytest.mark.postgres
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_pooled_connections_killed_by_postgresql_are_replaced(app, auth, database_url):
    alice = auth.create("alice")
    auth.login("alice")
    with app.app_context():
        token = db.session.scalar(sa.select(Login.token).where(Login.user_id == alice))
        db.session.close()
        assert user_id_of_login(token) == alice  # a pooled connection exists now
        with psycopg.connect(database_url.replace("postgresql+psycopg", "postgresql")) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()[0]
        assert killed >= 1
        assert user_id_of_login(token) == alice
        assert stored_events(alice) == []
