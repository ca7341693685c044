"""Storing notifications and publishing them to Redis once their transaction commits.

``notify()`` is the one path for the web, the workers and the CLI:
store (replacing the user's previous notification of that kind) → commit → publish.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session

from app import telemetry
from app.extensions import db, realtime
from app.models import Notification, User
from app.notifications.events import MAX_MESSAGE_BYTES, Event, channel_for
from app.notifications.kinds import SESSION_ENDED, NotificationRefused, declared, session_tag
from app.rawsql import RawSelect

log = logging.getLogger(__name__)

_PENDING = "tidings.pending_events"


def lock_user(user_id: int) -> None:
    """Serialise this user's notifications (PostgreSQL row lock; SQLite serialises writers anyway).

    Take it before computing what to store, so a count reflects every committed message.
    """
    db.session.execute(sa.select(User.id).where(User.id == user_id).with_for_update())


def store(user: User, name: str, data: Any) -> Event:
    """Add ``user``'s notification ``name`` to the session; it is published after commit.

    NotificationRefused (nothing added) for an undeclared or reserved name, or data that
    cannot be sent on.

    The user's row is locked first, so notifications of one user commit in id order
    (PostgreSQL); SQLite serialises writers anyway.
    """
    kind = declared(name)
    payload = encode(data)
    key = kind.key(data)
    lock_user(user.id)
    db.session.execute(
        sa.delete(Notification).where(Notification.user_id == user.id, Notification.key == key)
    )
    row = Notification(user_id=user.id, name=name, key=key, timestamp=time.time(), payload_json=payload)
    db.session.add(row)
    db.session.flush()
    event = Event(name=name, data=data, timestamp=row.timestamp, id=row.id)
    db.session.info.setdefault(_PENDING, []).append((user.id, event))
    return event


def encode(data: Any) -> str:
    """``data`` as the JSON a browser gets; NotificationRefused if it cannot be."""
    try:
        payload = json.dumps(data, allow_nan=False)
    except (ValueError, TypeError) as exc:
        raise NotificationRefused(f"the data cannot be sent as JSON: {exc}") from None
    except RecursionError:
        raise NotificationRefused("the data is nested too deeply") from None
    if len(payload) > MAX_MESSAGE_BYTES - 1024:
        raise NotificationRefused(
            f"the data is {len(payload)} bytes of JSON; at most {MAX_MESSAGE_BYTES - 1024}"
        )
    return payload


def notify(user: User, name: str, data: Any) -> Event:
    """Store ``user``'s notification, commit, then publish it to the user's channel."""
    event = store(user, name, data)
    db.session.commit()
    return event


def publish(user_id: int, event: Event) -> bool:
    """Publish ``event`` on the user's channel; False (and a summed-up warning) when Redis is away."""
    try:
        realtime.publish(channel_for(user_id), event.to_json())
    except redis.RedisError as exc:
        # The notification is stored: streams re-read the store when their hub reconnects.
        telemetry.PUBLISH_FAILURES.inc()
        realtime.state().publish_failures.failed(exc)
        return False
    realtime.state().publish_failures.succeeded()
    return True


def end_login_streams(user_id: int, login_token: str) -> None:
    """Close the open streams of one login, in every worker and on every host."""
    control = Event(name=SESSION_ENDED, data={"session": session_tag(login_token)}, timestamp=time.time())
    publish(user_id, control)


# Every stream connect runs it: built once, run on the driver's cursor (app/rawsql.py).
_STORED_SINCE = RawSelect(
    sa.select(Notification.id, Notification.name, Notification.payload_json, Notification.timestamp)
    .where(Notification.user_id == sa.bindparam("user_id"), Notification.id > sa.bindparam("since_id"))
    .order_by(Notification.id)
)


def stored_events(user_id: int, since_id: int = 0) -> list[Event]:
    """The user's stored notifications with id above ``since_id``, oldest first."""
    rows = _STORED_SINCE.rows(db.engine, user_id=user_id, since_id=since_id)
    return [Event(name=name, data=json.loads(raw), timestamp=ts, id=id_) for id_, name, raw, ts in rows]


def _publish_committed(session: Session) -> None:
    committed = time.perf_counter()
    for user_id, event in session.info.pop(_PENDING, ()):
        if publish(user_id, event):
            telemetry.COMMIT_TO_PUBLISH.observe(time.perf_counter() - committed)


def _forget_rolled_back(session: Session, previous_transaction: Any) -> None:
    if not previous_transaction.nested:
        session.info.pop(_PENDING, None)


def init_app(app) -> None:
    """Hook publishing onto the session's commit (idempotent)."""
    if not sa_event.contains(Session, "after_commit", _publish_committed):
        sa_event.listen(Session, "after_commit", _publish_committed)
        sa_event.listen(Session, "after_soft_rollback", _forget_rolled_back)
