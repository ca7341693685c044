"""Flask-Login's private names, fenced in this one module.

``/stream`` opens by the thousand after a deploy, so it reads which login the session holds
without loading the user through Flask-Login (``current_user`` runs the user loader: an ORM
query and object per connect). Flask-Login has no public door for "the id in the session";
it keeps it under ``session["_user_id"]`` (flask_login/login_manager.py, 0.6). The test
``tests/unit/test_private_apis.py::test_flask_login_keeps_the_login_under_its_session_key``
fails when an upgrade moves it; the requirement pins the version it covers.

An error page drawn while the database is away must not load the user (``current_user`` would
query again): ``draw_without_user`` sets Flask-Login's per-request user (``g._login_user``) to
its anonymous user, guarded by ``test_drawing_without_the_user_makes_current_user_anonymous``.
"""

from __future__ import annotations

from flask import current_app, g, session

# Flask-Login's private session key for the id ``UserMixin.get_id()`` returned at login.
FLASK_LOGIN_ID_KEY = "_user_id"


def session_login() -> str | None:
    """The login id (``get_id()`` at login) the request's session carries, or None."""
    value = session.get(FLASK_LOGIN_ID_KEY)
    return value if isinstance(value, str) else None


def draw_without_user() -> None:
    """Make this request's ``current_user`` Flask-Login's anonymous user, without a query."""
    g._login_user = current_app.login_manager.anonymous_user()
