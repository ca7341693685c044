"""Conversations: the messages between two users, their read state, and blocks.

A conversation is not a table: it is the messages whose sender and recipient are the two users
(``ix_message_pair``). Each message is read when its recipient opens the conversation
(``Message.read_at``); the unread badge counts a user's unread messages.

What a send or a read tells the two people, as stored notifications (replayed to a tab that
reconnects) published when the transaction commits:

- the recipient of a message: ``unread_message_count``, ``new_message`` (a toast) and
  ``conversation`` (the row of the conversation list, with that conversation's unread count);
- its sender: ``conversation`` too, so her other tabs and devices show the thread move;
- the sender of messages just read: ``message_read`` ("Seen" under her last message).

Every transaction that touches both users locks both first, in id order (``tidings.lock``):
a send and a read of the same conversation in the other direction never deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask_babel import gettext as _

from app.extensions import db
from app.models import Block, Message, User, utcnow
from app.notifications import tidings
from app.text import preview


class SendRefused(Exception):
    """A message that may not be sent (a block); the text says why, to the sender."""


def _between(a: int, b: int) -> sa.ColumnElement[bool]:
    return sa.or_(
        sa.and_(Message.sender_id == a, Message.recipient_id == b),
        sa.and_(Message.sender_id == b, Message.recipient_id == a),
    )


def _unread_from(me: int, other: int) -> int:
    query = sa.select(sa.func.count(Message.id)).where(
        Message.recipient_id == me, Message.sender_id == other, Message.read_at.is_(None)
    )
    return db.session.scalar(query) or 0


# -- the list of conversations -----------------------------------------------------------------


@dataclass
class Conversation:
    """One row of a user's conversation list."""

    other: User
    last: Message
    unread: int


def _latest_per_partner(me: int) -> sa.Subquery:
    partner = sa.case((Message.sender_id == me, Message.recipient_id), else_=Message.sender_id)
    return (
        sa.select(partner.label("other_id"), sa.func.max(Message.id).label("last_id"))
        .where(sa.or_(Message.sender_id == me, Message.recipient_id == me))
        .group_by(partner)
        .subquery()
    )


def partners_query(me: int) -> sa.Select:
    """The users ``me`` has exchanged messages with, the latest conversation first (to page)."""
    latest = _latest_per_partner(me)
    return (
        sa.select(User).join(latest, latest.c.other_id == User.id).order_by(latest.c.last_id.desc(), User.id)
    )


def conversations(me: int, partners: list[User]) -> list[Conversation]:
    """The rows for one page of ``partners``: each one's last message and unread count."""
    if not partners:
        return []
    ids = [u.id for u in partners]
    latest = _latest_per_partner(me)
    last = dict(
        db.session.execute(
            sa.select(latest.c.other_id, Message)
            .join(Message, Message.id == latest.c.last_id)
            .where(latest.c.other_id.in_(ids))
        ).all()
    )
    unread = dict(
        db.session.execute(
            sa.select(Message.sender_id, sa.func.count(Message.id))
            .where(Message.recipient_id == me, Message.read_at.is_(None), Message.sender_id.in_(ids))
            .group_by(Message.sender_id)
        ).all()
    )
    return [Conversation(u, last[u.id], unread.get(u.id, 0)) for u in partners]


def summary(me: User, other: User) -> dict[str, Any]:
    """The ``conversation`` notification's data: what ``me``'s list shows for ``other``."""
    last = db.session.scalars(
        sa.select(Message).where(_between(me.id, other.id)).order_by(Message.id.desc()).limit(1)
    ).one()
    return {
        "with": other.username,
        "message_id": last.id,
        "from": last.sender.username,
        "preview": preview(last.body),
        "at": last.timestamp.isoformat(),
        "unread": _unread_from(me.id, other.id),
    }


# -- one conversation --------------------------------------------------------------------------


def thread(me: User, other: User, before: int | None, limit: int) -> tuple[list[Message], bool]:
    """Up to ``limit`` messages of the conversation older than id ``before`` (the newest when
    None), oldest first, and whether older ones remain."""
    query = sa.select(Message).where(_between(me.id, other.id))
    if before is not None:
        query = query.where(Message.id < before)
    rows = db.session.scalars(query.order_by(Message.id.desc()).limit(limit + 1)).all()
    return list(reversed(rows[:limit])), len(rows) > limit


def newer_than(me: User, other: User, after: int, limit: int) -> list[Message]:
    """The conversation's messages after id ``after``, oldest first (what a live page lacks)."""
    query = sa.select(Message).where(_between(me.id, other.id), Message.id > after)
    return list(db.session.scalars(query.order_by(Message.id).limit(limit)))


def seen(me: User, other: User) -> dict[str, Any] | None:
    """When ``other`` read ``me``'s last message to them, if they have: the ``message_read`` data.
    None while either has blocked the other: a blocked person learns nothing of the blocker."""
    if not may_write(me, other):
        return None
    last = db.session.scalars(
        sa.select(Message)
        .where(Message.sender_id == me.id, Message.recipient_id == other.id)
        .order_by(Message.id.desc())
        .limit(1)
    ).first()
    if last is None or last.read_at is None:
        return None
    return {"by": other.username, "message_id": last.id, "at": last.read_at.isoformat()}


# -- sending, reading, blocking ----------------------------------------------------------------


def send(sender: User, recipient: User, body: str) -> Message:
    """Store ``body`` from ``sender`` to ``recipient`` and tell both, in the caller's
    transaction (the caller commits). SendRefused when either has blocked the other.

    On SQLite the locks are no-ops and the block is read before the write begins: a message
    racing the block that refuses it by milliseconds may still go through."""
    tidings.lock(sender, recipient)
    if recipient.has_blocked(sender):
        raise SendRefused(_("%(name)s is not accepting messages from you.", name=recipient.username))
    if sender.has_blocked(recipient):
        raise SendRefused(
            _("You have blocked %(name)s. Unblock them to send a message.", name=recipient.username)
        )
    msg = Message(sender_id=sender.id, recipient_id=recipient.id, body=body)
    db.session.add(msg)
    db.session.flush()
    tidings.notify(recipient, "unread_message_count", recipient.unread_message_count())
    tidings.notify(
        recipient,
        "new_message",
        {"message_id": msg.id, "sender": sender.username, "preview": preview(msg.body)},
    )
    tidings.notify(recipient, "conversation", summary(recipient, sender))
    tidings.notify(sender, "conversation", summary(sender, recipient))
    return msg


def mark_read(reader: User, other: User) -> bool:
    """Mark the messages ``other`` sent ``reader`` read, and tell both (the caller commits):
    the reader's count and list row; "Seen" for the other. False when none was unread."""
    tidings.lock(reader, other)
    now: datetime = utcnow()
    unread = sa.and_(
        Message.recipient_id == reader.id, Message.sender_id == other.id, Message.read_at.is_(None)
    )
    newest = db.session.scalar(sa.select(sa.func.max(Message.id)).where(unread))
    if newest is None:
        return False
    db.session.execute(sa.update(Message).where(unread, Message.id <= newest).values(read_at=now))
    tidings.notify(reader, "unread_message_count", reader.unread_message_count())
    tidings.notify(reader, "conversation", summary(reader, other))
    receipt = seen(other, reader)
    if receipt is not None:
        tidings.notify(other, "message_read", receipt)
    return True


def set_blocked(blocker: User, blocked: User, on: bool) -> None:
    """Block (or unblock) ``blocked`` for ``blocker`` (the caller commits). Nothing is sent to
    the blocked user: they learn of it only when a message is refused."""
    tidings.lock(blocker, blocked)
    existing = db.session.scalar(
        sa.select(Block).where(Block.blocker_id == blocker.id, Block.blocked_id == blocked.id)
    )
    if on and existing is None:
        db.session.add(Block(blocker_id=blocker.id, blocked_id=blocked.id))
    elif not on and existing is not None:
        db.session.delete(existing)


def may_write(sender: User, recipient: User) -> bool:
    """Whether neither has blocked the other (typing is dropped otherwise)."""
    blocks = sa.select(Block.id).where(
        sa.or_(
            sa.and_(Block.blocker_id == recipient.id, Block.blocked_id == sender.id),
            sa.and_(Block.blocker_id == sender.id, Block.blocked_id == recipient.id),
        )
    )
    return db.session.scalar(blocks.limit(1)) is None
