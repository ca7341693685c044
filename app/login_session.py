"""Flask-Login's session key, fenced in this one module.

``/stream`` opens by the thousand after a deploy, so it reads which login the session holds
without loading the user through Flask-Login (``current_user`` runs the user loader: an ORM
query and object per connect). Flask-Login has no public door for "the id in the session";
it keeps it under ``session["_user_id"]`` (flask_login/login_manager.py, 0.6). The test
``tests/unit/test_private_apis.py::test_flask_login_keeps_the_login_under_its_session_key``
fails when an upgrade moves it; the requirement pins the version it covers.
"""

from __future__ import annotations

from flask import session

# Flask-Login's private session key for the id ``UserMixin.get_id()`` returned at login.
FLASK_LOGIN_ID_KEY = "_user_id"


def session_login() -> str | None:
    """The login id (``get_id()`` at login) the request's session carries, or None."""
    value = session.get(FLASK_LOGIN_ID_KEY)
    return value if isinstance(value, str) else None
