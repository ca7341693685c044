"""Where notifications are kept: the interface the engine needs, and the SQLAlchemy one.

The store keeps each user's latest notification per key (``Kind.key``) with an id that only
grows; a stream replays it from a cursor. ``SQLAlchemyStore`` keeps it in the app's own
database, in a table the app declares with ``NotificationMixin`` and migrates as it does its
others. A notification is added inside the caller's transaction and published once that
transaction commits (``after_commit``), never before and never after a rollback.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Protocol

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy import event as sa_event

from flask_tidings.events import Event
from flask_tidings.rawsql import RawSelect

# A callback run once per notification after its transaction commits: (user_id, event).
Published = Callable[[int, Event], None]


class Store(Protocol):
    """What the engine asks of a notification store."""

    def lock(self, user_id: int) -> None:
        """Serialise ``user_id``'s notifications until the caller's transaction ends."""

    def add(self, user_id: int, name: str, key: str, payload: str, on_commit: Published) -> Event:
        """Replace ``user_id``'s notification of ``key`` in the caller's transaction; ``on_commit``
        runs with the stored event once that transaction commits."""

    def forget(self, user_id: int, key: str) -> None:
        """Delete ``user_id``'s notification of ``key`` in the caller's transaction."""

    def since_id(self, user_id: int, since_id: int) -> list[Event]:
        """The user's notifications with id above ``since_id``, oldest first (every stream connect)."""

    def since_time(self, user_id: int, timestamp: float) -> list[Event]:
        """The user's notifications stored after ``timestamp`` (Unix seconds), oldest first."""

    def latest_id(self, user_id: int) -> int:
        """The newest stored id of the user (0 for none): where a freshly rendered page resumes."""


class NotificationMixin:
    """The columns of a notification table, for a Flask-SQLAlchemy model the app declares.

    The app names the table and may give ``user_id`` its foreign key::

        class Notification(NotificationMixin, db.Model):
            __tablename__ = "notification"
            user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey(User.id), index=True)

    The id comes from an autoincrement sequence, so it only grows, even on SQLite where a
    plain rowid would be reused after the newest row is replaced.
    """

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    user_id: so.Mapped[int] = so.mapped_column(index=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(128))
    key: so.Mapped[str] = so.mapped_column(sa.String(191))
    timestamp: so.Mapped[float] = so.mapped_column(sa.Float, index=True)
    payload_json: so.Mapped[str] = so.mapped_column(sa.Text)

    @so.declared_attr.directive
    def __table_args__(cls) -> tuple:  # noqa: N805 - SQLAlchemy passes the class
        return (
            sa.UniqueConstraint("user_id", "key", name=f"uq_{cls.__tablename__}_user_id_key"),
            {"sqlite_autoincrement": True},
        )

    def to_event(self) -> Event:
        """The stored notification as an ``Event``."""
        return Event(
            name=self.name,
            data=json.loads(self.payload_json),
            timestamp=self.timestamp,
            id=self.id,
            key=self.key,
        )

    def to_dict(self) -> dict[str, Any]:
        """The Notification JSON of the contract."""
        return self.to_event().to_dict()


_PENDING = "flask_tidings.pending"


class SQLAlchemyStore:
    """Notifications in the app's database through Flask-SQLAlchemy's ``db`` and a model made
    with ``NotificationMixin``.

    ``lock_rows_of``: a model whose row (by the user's id) is locked to serialise a user's
    notifications, typically the user model, so whatever else updates that row waits too
    (an "all read" that resets the count);
    without it PostgreSQL takes a transaction-scoped advisory lock. SQLite serialises
    writers by itself.
    """

    # pg_advisory_xact_lock(class, id): this class id keeps ours apart from an app's own locks.
    ADVISORY_CLASS = 0x7469

    def __init__(self, db: Any, model: type, *, lock_rows_of: type | None = None) -> None:
        self.db = db
        self.model = model
        self.lock_rows_of = lock_rows_of
        m = model
        # Every stream connect runs it: built once, run on the driver's cursor (rawsql.py).
        self._since_id = RawSelect(
            sa.select(m.id, m.name, m.payload_json, m.timestamp, m.key)
            .where(m.user_id == sa.bindparam("user_id"), m.id > sa.bindparam("since_id"))
            .order_by(m.id)
        )
        if not sa_event.contains(db.session, "after_commit", _publish_committed):
            sa_event.listen(db.session, "after_commit", _publish_committed)
            sa_event.listen(db.session, "after_soft_rollback", _forget_rolled_back)

    def lock(self, user_id: int) -> None:
        """Serialise ``user_id``'s notifications until this transaction ends."""
        session = self.db.session
        if self.lock_rows_of is not None:
            owner = self.lock_rows_of
            # FOR NO KEY UPDATE: it waits for whatever else updates the row, but not for rows
            # that merely refer to it (a message to this user inserted before the lock).
            session.execute(sa.select(owner.id).where(owner.id == user_id).with_for_update(key_share=True))
        elif session.get_bind().dialect.name == "postgresql":
            session.execute(sa.select(sa.func.pg_advisory_xact_lock(self.ADVISORY_CLASS, user_id)))

    def add(self, user_id: int, name: str, key: str, payload: str, on_commit: Published) -> Event:
        """Replace the user's notification of ``key`` in this transaction; publish after commit."""
        session = self.db.session
        self.forget(user_id, key)
        row = self.model(user_id=user_id, name=name, key=key, timestamp=time.time(), payload_json=payload)
        session.add(row)
        session.flush()
        event = Event(name=name, data=json.loads(payload), timestamp=row.timestamp, id=row.id, key=key)
        session.info.setdefault(_PENDING, []).append((on_commit, user_id, event))
        return event

    def forget(self, user_id: int, key: str) -> None:
        """Delete the user's notification of ``key`` in this transaction."""
        m = self.model
        self.db.session.execute(sa.delete(m).where(m.user_id == user_id, m.key == key))

    def since_id(self, user_id: int, since_id: int) -> list[Event]:
        """The user's notifications with id above ``since_id``, oldest first."""
        rows = self._since_id.rows(self.db.engine, user_id=user_id, since_id=since_id)
        return [
            Event(name=name, data=json.loads(raw), timestamp=ts, id=id_, key=key)
            for id_, name, raw, ts, key in rows
        ]

    def since_time(self, user_id: int, timestamp: float) -> list[Event]:
        """The user's notifications stored after ``timestamp``, oldest first."""
        m = self.model
        rows = self.db.session.scalars(
            sa.select(m).where(m.user_id == user_id, m.timestamp > timestamp).order_by(m.timestamp, m.id)
        )
        return [row.to_event() for row in rows]

    def latest_id(self, user_id: int) -> int:
        """The newest stored id of the user, 0 for none."""
        m = self.model
        return self.db.session.scalar(sa.select(sa.func.max(m.id)).where(m.user_id == user_id)) or 0


def _publish_committed(session: so.Session) -> None:
    for on_commit, user_id, event in session.info.pop(_PENDING, ()):
        on_commit(user_id, event)


def _forget_rolled_back(session: so.Session, previous_transaction: Any) -> None:
    if not previous_transaction.nested:
        session.info.pop(_PENDING, None)
