"""The migrations build the schema the models describe, on SQLite and PostgreSQL."""

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask_migrate import upgrade

from app import create_app
from app.extensions import db


def test_upgrade_builds_exactly_the_models_schema(config):
    app = create_app(config)
    with app.app_context():
        upgrade(directory="migrations")
        with db.engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, db.metadata)
        assert diff == []
        tables = set(sa.inspect(db.engine).get_table_names())
        assert {"user", "message", "notification", "task", "alembic_version"} <= tables
        db.engine.dispose()


def test_what_the_old_inbox_had_read_stays_read(config):
    """0004 moves the read state from the user (one read time) to each message."""
    app = create_app(config)
    with app.app_context():
        upgrade(directory="migrations", revision="0003")
        with db.engine.begin() as conn:
            conn.execute(
                sa.text(
                    'INSERT INTO "user" (id, username, email, password_hash, created_at, last_seen, '
                    "last_message_read_time) VALUES (1, 'a', 'a@x', 'h', :t, :t, NULL), "
                    "(2, 'b', 'b@x', 'h', :t, :t, '2026-06-01 12:00:00')"
                ),
                {"t": "2026-01-01 00:00:00"},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO message (id, sender_id, recipient_id, body, timestamp) VALUES "
                    "(1, 1, 2, 'read before', '2026-05-01 00:00:00'), "
                    "(2, 1, 2, 'new since', '2026-07-01 00:00:00'), "
                    "(3, 2, 1, 'never read', '2026-05-01 00:00:00')"
                )
            )
        upgrade(directory="migrations")
        with db.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, read_at FROM message ORDER BY id")).all()
        assert [(i, r is not None) for i, r in rows] == [(1, True), (2, False), (3, False)]
        db.engine.dispose()
