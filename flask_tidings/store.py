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
import uuid
from collections.abc import Callable
from functools import cached_property
from typing import Any, Protocol

import sqlalchemy as sa
import sqlalchemy.orm as so
from sqlalchemy import event as sa_event

from flask_tidings.events import Event
from flask_tidings.rawsql import RawSelect

# A callback run once per notification after its transaction commits: (user_id, event).
Published = Callable[[Any, Event], None]


class Store(Protocol):
    """What the engine asks of a notification store.

    ``user_id`` is the app's id of the user, or its ``str()`` (the engine names users by the
    string that ends their channel's name): a store takes either.
    """

    def lock(self, user_id: Any) -> None:
        """Serialise ``user_id``'s notifications until the caller's transaction ends."""

    def add(self, user_id: Any, name: str, key: str, payload: str, on_commit: Published) -> Event:
        """Replace ``user_id``'s notification of ``key`` in the caller's transaction; ``on_commit``
        runs with the stored event once that transaction commits."""

    def forget(self, user_id: Any, key: str) -> None:
        """Delete ``user_id``'s notification of ``key`` in the caller's transaction."""

    def trim(self, user_id: Any, name: str, keep: int) -> None:
        """(Optional.) Keep only the newest ``keep`` of ``user_id``'s notifications named ``name``,
        in the caller's transaction."""

    def since_id(self, user_id: Any, since_id: int) -> list[Event]:
        """The user's notifications with id above ``since_id``, oldest first (every stream connect)."""

    def since_time(self, user_id: Any, timestamp: float) -> list[Event]:
        """The user's notifications stored after ``timestamp`` (Unix seconds), oldest first."""

    def latest_id(self, user_id: Any) -> int:
        """The newest stored id of the user (0 for none): where a freshly rendered page resumes."""


class NotificationMixin:
    """The columns of a notification table, for a Flask-SQLAlchemy model the app declares.

    The app names the table and may give ``user_id`` its foreign key, whose type follows the
    user model's key (an integer, a string, a UUID)::

        class Notification(NotificationMixin, db.Model):
            __tablename__ = "notification"
            user_id = db.Column(db.ForeignKey(User.id), index=True)

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
    (an "all read" that resets the count). The row is found by the column ``user_id``'s
    foreign key names, else by the model's primary key. Without it PostgreSQL takes a
    transaction-scoped advisory lock and SQLite serialises writers by itself; MySQL and
    MariaDB have neither, so there the store refuses to start without ``lock_rows_of``.
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

    def check_app(self, app: Any) -> None:
        """At ``init_app``: refuse a database where a user's notifications could not be locked."""
        try:
            with app.app_context():
                dialect = self.db.engine.dialect.name
        except (RuntimeError, KeyError):  # the app binds Flask-SQLAlchemy later: checked at the first lock
            return
        self._check_dialect(dialect)

    def _check_dialect(self, dialect: str) -> None:
        if dialect in ("mysql", "mariadb") and self.lock_rows_of is None:
            raise RuntimeError(
                f"Flask-Tidings cannot serialise a user's notifications on {dialect} by itself: "
                "give SQLAlchemyStore(..., lock_rows_of=User) the model whose row it may lock"
            )

    @cached_property
    def _native(self) -> Callable[[Any], Any]:
        """The app's id from the engine's string (or from the id itself), by ``user_id``'s type."""
        try:
            python_type = self.model.__table__.c.user_id.type.python_type
        except NotImplementedError:
            return lambda value: value
        if python_type in (int, str):
            return python_type
        if python_type is uuid.UUID:
            return lambda value: value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
        return lambda value: value

    @cached_property
    def _lock_column(self) -> sa.ColumnElement:
        """The column of ``lock_rows_of`` that a notification's ``user_id`` stands for."""
        owner_table = sa.inspect(self.lock_rows_of).local_table
        for fk in self.model.__table__.c.user_id.foreign_keys:
            if fk.references(owner_table):
                return getattr(
                    self.lock_rows_of, sa.inspect(self.lock_rows_of).get_property_by_column(fk.column).key
                )
        primary = sa.inspect(self.lock_rows_of).primary_key
        if len(primary) != 1:
            raise RuntimeError(f"lock_rows_of={self.lock_rows_of.__name__}: give user_id a foreign key to it")
        return primary[0]

    def lock(self, user_id: Any) -> None:
        """Serialise ``user_id``'s notifications until this transaction ends."""
        session = self.db.session
        user_id = self._native(user_id)
        if self.lock_rows_of is not None:
            column = self._lock_column
            # FOR NO KEY UPDATE: it waits for whatever else updates the row, but not for rows
            # that merely refer to it (a message to this user inserted before the lock).
            session.execute(sa.select(column).where(column == user_id).with_for_update(key_share=True))
            return
        dialect = session.get_bind().dialect.name
        self._check_dialect(dialect)
        if dialect == "postgresql":
            # Two int4 keys: an integer id that fits is itself, any other its hash (a collision
            # only serialises two users' notifications).
            fits = isinstance(user_id, int) and -(2**31) <= user_id < 2**31
            second = user_id if fits else sa.func.hashtext(str(user_id))
            session.execute(sa.select(sa.func.pg_advisory_xact_lock(self.ADVISORY_CLASS, second)))

    def add(self, user_id: Any, name: str, key: str, payload: str, on_commit: Published) -> Event:
        """Replace the user's notification of ``key`` in this transaction; publish after commit."""
        session = self.db.session
        user_id = self._native(user_id)
        self.forget(user_id, key)
        row = self.model(user_id=user_id, name=name, key=key, timestamp=time.time(), payload_json=payload)
        session.add(row)
        session.flush()
        event = Event(name=name, data=json.loads(payload), timestamp=row.timestamp, id=row.id, key=key)
        # The innermost savepoint it was added in: a rollback of that savepoint drops it.
        savepoint = session().get_nested_transaction()  # the scoped session's own Session
        session.info.setdefault(_PENDING, []).append((on_commit, user_id, event, savepoint))
        return event

    def forget(self, user_id: Any, key: str) -> None:
        """Delete the user's notification of ``key`` in this transaction."""
        m = self.model
        self.db.session.execute(sa.delete(m).where(m.user_id == self._native(user_id), m.key == key))

    def trim(self, user_id: Any, name: str, keep: int) -> None:
        """Keep the newest ``keep`` of the user's notifications named ``name`` (a kind with
        ``per``), in this transaction: one read of the id after the ``keep`` newest, and a
        delete only when there is one (two statements: MySQL cannot delete from a table it
        reads in a subquery)."""
        m = self.model
        mine = (m.user_id == self._native(user_id), m.name == name)
        session = self.db.session
        cut = session.scalar(sa.select(m.id).where(*mine).order_by(m.id.desc()).offset(keep).limit(1))
        if cut is not None:
            session.execute(sa.delete(m).where(*mine, m.id <= cut))

    def since_id(self, user_id: Any, since_id: int) -> list[Event]:
        """The user's notifications with id above ``since_id``, oldest first."""
        rows = self._since_id.rows(self.db.engine, user_id=self._native(user_id), since_id=since_id)
        return [
            Event(name=name, data=json.loads(raw), timestamp=ts, id=id_, key=key)
            for id_, name, raw, ts, key in rows
        ]

    def since_time(self, user_id: Any, timestamp: float) -> list[Event]:
        """The user's notifications stored after ``timestamp``, oldest first."""
        m = self.model
        rows = self.db.session.scalars(
            sa.select(m)
            .where(m.user_id == self._native(user_id), m.timestamp > timestamp)
            .order_by(m.timestamp, m.id)
        )
        return [row.to_event() for row in rows]

    def latest_id(self, user_id: Any) -> int:
        """The newest stored id of the user, 0 for none."""
        m = self.model
        where = m.user_id == self._native(user_id)
        return self.db.session.scalar(sa.select(sa.func.max(m.id)).where(where)) or 0


def _publish_committed(session: so.Session) -> None:
    """After a commit: publish what the transaction added. SQLAlchemy says "after commit" of a
    savepoint released too; that is not yet a commit of the database's, so nothing goes then."""
    if session.in_nested_transaction():
        return
    for on_commit, user_id, event, _savepoint in session.info.pop(_PENDING, ()):
        on_commit(user_id, event)


def _forget_rolled_back(session: so.Session, previous_transaction: Any) -> None:
    """A rollback: of the whole transaction, forget every pending publish; of a savepoint,
    those added inside it (or inside savepoints it enclosed)."""
    if not previous_transaction.nested:
        session.info.pop(_PENDING, None)
        return
    pending = session.info.get(_PENDING)
    if pending:
        pending[:] = [item for item in pending if not _inside(item[3], previous_transaction)]


def _inside(savepoint: Any, ended: Any) -> bool:
    while savepoint is not None:
        if savepoint is ended:
            return True
        savepoint = savepoint.parent
    return False
