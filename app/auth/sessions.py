"""An id per login, kept in the session cookie, so logging out can end that login's streams."""

from __future__ import annotations

import secrets

from flask import session

SESSION_KEY = "login_id"


def start_login_session() -> str:
    """Give a fresh login its own id."""
    sid = session[SESSION_KEY] = secrets.token_urlsafe(16)
    return sid


def login_session_id() -> str:
    """This login's id; a login restored from the remember-me cookie gets one on first use."""
    return session.get(SESSION_KEY) or start_login_session()


def end_login_session() -> str | None:
    """Forget this login's id, returning it."""
    return session.pop(SESSION_KEY, None)
