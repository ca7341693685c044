"""Logins that can be revoked: each one a ``Login`` row whose token the cookies carry.

Logging out revokes the login in the database, so its session cookie and its remember-me
cookie stop working at once everywhere (copies included), removes the push subscriptions made
in it, and closes that login's open streams through flask_tidings (``tidings.end_login``).
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa

from app.extensions import db
from app.models import Login, User, utcnow
from app.notifications import tidings
from app.push import subscriptions


def start_login(user: User) -> str:
    """Record a new login of ``user`` (committed) and make it the one ``user`` is loaded through."""
    token = secrets.token_urlsafe(32)
    db.session.add(Login(token=token, user_id=user.id))
    db.session.commit()
    user.login_token = token
    return token


def end_login(user: User) -> None:
    """Revoke the login ``user`` was loaded through, and close its streams."""
    _revoke(user, [user.login_token])


def end_every_login(user: User) -> int:
    """Revoke every open login of ``user`` (all browsers), closing their streams; how many."""
    tokens = db.session.scalars(
        sa.select(Login.token).where(Login.user_id == user.id, Login.revoked_at.is_(None))
    ).all()
    _revoke(user, tokens)
    return len(tokens)


def _revoke(user: User, tokens: list[str]) -> None:
    """The logins end, their devices get no more pushes, and their streams close."""
    db.session.execute(
        sa.update(Login).where(Login.user_id == user.id, Login.token.in_(tokens)).values(revoked_at=utcnow())
    )
    subscriptions.remove_of_logins(tokens)
    db.session.commit()
    for token in tokens:
        tidings.end_login(user, token)
