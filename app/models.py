"""Database models: users, private messages, stored notifications and background tasks."""

from __future__ import annotations

import secrets
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import current_app
from flask_login import UserMixin
from werkzeug.security import check_password_hash, generate_password_hash

from app.blocking import off_the_loop
from app.extensions import db, login
from flask_tidings import NotificationMixin, RawSelect


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator):
    """A timezone-aware UTC datetime, stored naive so SQLite and PostgreSQL agree."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class User(UserMixin, db.Model):
    """A registered account."""

    __tablename__ = "user"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    username: so.Mapped[str] = so.mapped_column(sa.String(64), unique=True)
    email: so.Mapped[str] = so.mapped_column(sa.String(254), unique=True)
    password_hash: so.Mapped[str] = so.mapped_column(sa.String(256))
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime(), default=utcnow)
    last_seen: so.Mapped[datetime] = so.mapped_column(UTCDateTime(), default=utcnow)
    # The seed's one read time for the whole inbox: unused since each message has its own
    # ``read_at`` (migration 0004 took it over). Dropping it would rebuild this table on SQLite.
    last_message_read_time: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime())
    # The language the user chose (app/i18n.py LANGUAGES), on every device; None: the browser's.
    language: so.Mapped[str | None] = so.mapped_column(sa.String(16))

    # The login (see ``Login``) this user object was loaded through; Flask-Login's id for it.
    login_token = None  # not a column (no annotation): set per loaded instance

    def __repr__(self) -> str:
        return f"<User {self.username}>"

    def get_id(self) -> str | None:
        """What the session and remember-me cookies carry: the login's token, never the user id,
        so revoking the login revokes both cookies, copies included."""
        return self.login_token

    def set_password(self, password: str) -> None:
        """Store a salted hash of ``password`` (hashed off the event loop)."""
        self.password_hash = hash_password(password)

    def check_password(self, password: str) -> bool:
        """Whether ``password`` matches the stored hash (hashed off the event loop)."""
        return off_the_loop(check_password_hash, self.password_hash, password)

    def unread_message_count(self) -> int:
        """Messages received and not yet read (each read when its conversation is opened)."""
        query = sa.select(sa.func.count(Message.id)).where(
            Message.recipient_id == self.id, Message.read_at.is_(None)
        )
        return db.session.scalar(query) or 0

    def has_blocked(self, other: User) -> bool:
        """Whether this user has blocked ``other`` (who may then not write to them)."""
        query = sa.select(Block.id).where(Block.blocker_id == self.id, Block.blocked_id == other.id)
        return db.session.scalar(query) is not None


class Login(db.Model):
    """One login: a browser's session (and remember-me cookie), until it is revoked or expires.

    The cookies carry ``token``; every request looks it up, so a revoked login stops working
    at once on every worker and host, copied cookies included. A login also ends, on the server,
    ``LOGIN_IDLE_HOURS`` after its last page (``last_used_at``, kept to the minute) and
    ``LOGIN_ABSOLUTE_DAYS`` after it began, whatever its cookies say.
    """

    __tablename__ = "login"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    token: so.Mapped[str] = so.mapped_column(sa.String(64), unique=True)
    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey(User.id), index=True)
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime())
    last_used_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime())

    user: so.Mapped[User] = so.relationship()


# Built once: every request runs one, and building a statement (and its cache key) costs as
# much as running it on SQLite (docs/benchmarks: connect CPU per stream).
_LAST_USED = sa.func.coalesce(Login.last_used_at, Login.created_at)
_OPEN_LOGIN = (
    Login.token == sa.bindparam("token"),
    Login.revoked_at.is_(None),
    Login.created_at > sa.bindparam("born_after", type_=UTCDateTime()),
    _LAST_USED > sa.bindparam("used_after", type_=UTCDateTime()),
)
_USER_OF_LOGIN = sa.select(User, _LAST_USED).join(Login, Login.user_id == User.id).where(*_OPEN_LOGIN)
_USER_ID_OF_LOGIN = RawSelect(sa.select(Login.user_id).where(*_OPEN_LOGIN))
# How stale ``last_used_at`` may get before a page writes it again (one write a minute at most).
_USE_RESOLUTION = timedelta(minutes=1)


def _lifetimes() -> dict[str, datetime]:
    """The bounds a login's start and last use must be past to be open now."""
    now = utcnow()
    return {
        "born_after": now - timedelta(days=current_app.config["LOGIN_ABSOLUTE_DAYS"]),
        "used_after": now - timedelta(hours=current_app.config["LOGIN_IDLE_HOURS"]),
    }


def login_is_open() -> tuple:
    """The conditions a ``Login`` row meets while it is open: not revoked, not expired."""
    bounds = _lifetimes()
    return (
        Login.revoked_at.is_(None),
        Login.created_at > bounds["born_after"],
        _LAST_USED > bounds["used_after"],
    )


def _plausible(token: object) -> bool:
    return isinstance(token, str) and len(token) <= 64


@login.user_loader
def load_user(token: str) -> User | None:
    """Flask-Login hook: the user of a login that is neither revoked nor expired; the login's
    last use is recorded (to the minute)."""
    if not _plausible(token):
        return None
    found = db.session.execute(_USER_OF_LOGIN, {"token": token, **_lifetimes()}).one_or_none()
    if found is None:
        return None
    user, last_used = found
    user.login_token = token
    if utcnow() - last_used > _USE_RESOLUTION:
        with db.engine.begin() as conn:  # its own short transaction, whatever the page does
            conn.execute(sa.update(Login).where(Login.token == token).values(last_used_at=utcnow()))
    return user


def open_logins(tokens: Collection[str]) -> set[str]:
    """Those of ``tokens`` whose login has not been revoked (streams carried to a new worker)."""
    wanted = [t for t in tokens if _plausible(t)]
    if not wanted:
        return set()
    query = sa.select(Login.token).where(Login.token.in_(wanted), *login_is_open())
    with db.engine.connect() as conn:
        return set(conn.execute(query).scalars())


def user_id_of_login(token: object) -> int | None:
    """The user id of a login that has not been revoked, the same rule as ``load_user``, without
    loading the user: /stream needs only the id, on its own short connection, and opens by the
    thousand after a deploy."""
    if not _plausible(token):
        return None
    rows = _USER_ID_OF_LOGIN.rows(db.engine, token=token, **_lifetimes())
    return rows[0][0] if rows else None


MESSAGE_MAX_CHARS = 2000


class Message(db.Model):
    """A private message from one user to another; ``read_at`` is set when its recipient opens
    the conversation."""

    __tablename__ = "message"
    # A conversation's thread, either direction, by id; a user's unread messages.
    __table_args__ = (
        sa.Index("ix_message_pair", "sender_id", "recipient_id", "id"),
        sa.Index("ix_message_unread", "recipient_id", "read_at"),
    )

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    sender_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey(User.id), index=True)
    recipient_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey(User.id), index=True)
    body: so.Mapped[str] = so.mapped_column(sa.String(MESSAGE_MAX_CHARS))
    timestamp: so.Mapped[datetime] = so.mapped_column(UTCDateTime(), index=True, default=utcnow)
    read_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime())

    sender: so.Mapped[User] = so.relationship(foreign_keys=[sender_id])
    recipient: so.Mapped[User] = so.relationship(foreign_keys=[recipient_id])

    def __repr__(self) -> str:
        return f"<Message {self.id} {self.sender_id}->{self.recipient_id}>"

    def to_dict(self) -> dict[str, Any]:
        """The message as exported to its users."""
        return {
            "id": self.id,
            "sender": self.sender.username,
            "recipient": self.recipient.username,
            "body": self.body,
            "timestamp": self.timestamp.isoformat(),
        }


class Block(db.Model):
    """``blocker`` refuses messages (and typing) from ``blocked``."""

    __tablename__ = "block"
    __table_args__ = (sa.UniqueConstraint("blocker_id", "blocked_id"),)

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    blocker_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey(User.id), index=True)
    blocked_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey(User.id))
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime(), default=utcnow)


class ApiKey(db.Model):
    """A service's key for the publish API: the secret is shown once and kept only as a hash.

    The bearer token is ``tid_<prefix>_<secret>``: ``prefix`` finds the row, the secret's
    SHA-256 is compared in constant time. ``kinds`` (comma-separated) are what it may send;
    ``recipients`` (comma-separated usernames), if set, whom it may send to.
    """

    __tablename__ = "api_key"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(64), unique=True)
    prefix: so.Mapped[str] = so.mapped_column(sa.String(16), unique=True)
    secret_hash: so.Mapped[str] = so.mapped_column(sa.String(64))
    kinds: so.Mapped[str] = so.mapped_column(sa.String(1024))
    recipients: so.Mapped[str | None] = so.mapped_column(sa.Text())
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime())
    last_used_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime())

    @property
    def kind_names(self) -> list[str]:
        return [k for k in self.kinds.split(",") if k]

    @property
    def recipient_names(self) -> list[str] | None:
        return [r for r in self.recipients.split(",") if r] if self.recipients else None


PUSH_ENDPOINT_MAX = 1024


class PushSubscription(db.Model):
    """One device's Web Push subscription (app/push/): where its push service takes pushes for
    it, and the keys to encrypt them with. It belongs to the login it was made in: logging that
    browser out (or everywhere) removes it; ``language`` is the page's when it subscribed."""

    __tablename__ = "push_subscription"

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey(User.id), index=True)
    login_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey(Login.id), index=True)
    endpoint: so.Mapped[str] = so.mapped_column(sa.String(PUSH_ENDPOINT_MAX), unique=True)
    p256dh: so.Mapped[str] = so.mapped_column(sa.String(128))
    auth: so.Mapped[str] = so.mapped_column(sa.String(64))
    language: so.Mapped[str | None] = so.mapped_column(sa.String(16))
    user_agent: so.Mapped[str] = so.mapped_column(sa.String(256), default="")
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime(), default=utcnow)
    last_push_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime())

    def info(self) -> dict[str, Any]:
        """As the browser gave it (``PushSubscription.toJSON()``): what pywebpush sends to."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


class IdempotentRequest(db.Model):
    """A publish made with an ``Idempotency-Key``: a repeat (same key, same idempotency key,
    within 24 h) gets this answer again and stores nothing. The unique pair makes a racing
    repeat wait for the first and then find it."""

    __tablename__ = "idempotent_request"
    __table_args__ = (sa.UniqueConstraint("api_key_id", "key"),)

    id: so.Mapped[int] = so.mapped_column(primary_key=True)
    api_key_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey(ApiKey.id))
    key: so.Mapped[str] = so.mapped_column(sa.String(255))
    request_hash: so.Mapped[str] = so.mapped_column(sa.String(64))
    status: so.Mapped[int] = so.mapped_column(default=201)
    response_json: so.Mapped[str] = so.mapped_column(sa.Text(), default="")
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime(), default=utcnow, index=True)


class Notification(NotificationMixin, db.Model):
    """The latest notification of one kind (``Kind.key``) for one user: flask_tidings' store."""

    __tablename__ = "notification"

    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey(User.id), index=True)


class Task(db.Model):
    """A background job run for a user; its id is the RQ job id."""

    __tablename__ = "task"
    # One active task of a kind per user, enforced by the database even under races.
    __table_args__ = (
        sa.Index(
            "uq_task_one_active",
            "user_id",
            "name",
            unique=True,
            sqlite_where=sa.text("status IN ('queued', 'running')"),
            postgresql_where=sa.text("status IN ('queued', 'running')"),
        ),
    )

    id: so.Mapped[str] = so.mapped_column(sa.String(36), primary_key=True)
    name: so.Mapped[str] = so.mapped_column(sa.String(128), index=True)
    description: so.Mapped[str] = so.mapped_column(sa.String(128))
    user_id: so.Mapped[int] = so.mapped_column(sa.ForeignKey(User.id), index=True)
    status: so.Mapped[str] = so.mapped_column(sa.String(16), default="queued")
    progress: so.Mapped[int] = so.mapped_column(default=0)
    created_at: so.Mapped[datetime] = so.mapped_column(UTCDateTime(), default=utcnow)
    finished_at: so.Mapped[datetime | None] = so.mapped_column(UTCDateTime())
    error: so.Mapped[str | None] = so.mapped_column(sa.String(256))
    # A finished or failed task its user no longer wants to see above their conversations.
    dismissed: so.Mapped[bool] = so.mapped_column(default=False, server_default=sa.false())

    user: so.Mapped[User] = so.relationship()

    ACTIVE = ("queued", "running")

    @property
    def active(self) -> bool:
        """Whether the task is still waiting or running."""
        return self.status in self.ACTIVE


def check_password(user: User | None, password: str) -> bool:
    """Whether ``user`` exists and ``password`` is theirs. A missing user costs the same hashing
    as a present one, so the answer's timing does not tell which usernames exist."""
    if user is not None:
        return user.check_password(password)
    method = current_app.config.get("PASSWORD_HASH_METHOD", "scrypt")
    if _DUMMY_HASHES.get(method) is None:
        _DUMMY_HASHES[method] = generate_password_hash(secrets.token_urlsafe(16), method)
    off_the_loop(check_password_hash, _DUMMY_HASHES[method], password)
    return False


_DUMMY_HASHES: dict[str, str] = {}  # a hash of a random password per hashing method


def hash_password(password: str) -> str:
    """A salted hash of ``password`` (made off the event loop)."""
    return off_the_loop(
        generate_password_hash, password, current_app.config.get("PASSWORD_HASH_METHOD", "scrypt")
    )
