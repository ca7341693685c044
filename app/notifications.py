"""The site's live notifications: the kinds it declares and its ``Tidings`` (flask_tidings).

One event's path: a view (or job) calls ``tidings.notify()`` and commits → the extension
publishes to ``notifications:<user_id>`` → each worker's hub offers it to the user's open
streams → ``/stream`` → the browser's ``EventSource`` (flask_tidings/static/tidings.js) →
the handler this site registered for the kind (static/js/site.js) → the badge.

Who a stream belongs to is the login its session carries, checked by the same rule as
Flask-Login's loader but without loading the user (``user_id_of_login``): a deploy without
carrying reconnects every stream at once. To add a kind, add a line to ``KINDS``, and, if the
page should do more than re-dispatch it as ``tidings:<name>``, a handler in ``site.js``.
"""

from __future__ import annotations

import functools
from collections.abc import Collection

from flask_babel import gettext
from flask_login import current_user

from app.limits import limiter, per_user, setting
from app.login_session import session_login
from app.models import open_logins, user_id_of_login
from app.security import check_script_csrf
from flask_tidings import Identity, Kind, Tidings

KINDS = [
    Kind("unread_message_count", "the navbar badge and every count on the page (data: int)"),
    Kind(
        "new_message",
        "a toast per sender, opening the conversation (data: message_id, sender, preview); "
        "pushed to a user with no tab looking (app/push/)",
        push=True,
    ),
    Kind(
        "conversation",
        "a row of the conversation list; new messages in an open conversation "
        "(data: with, message_id, from, preview, at, unread)",
        per="with",
    ),
    Kind("message_read", '"Seen" under the last message sent (data: by, message_id, at)', per="by"),
    # Published, never stored (tidings.publish): gone with the moment.
    Kind("typing", '"alice is typing…" in the open conversation (data: from)'),
    Kind("task_progress", "the task's progress bar; a download link at 100", per="task_id"),
    Kind("announcement", "a toast with the text (data: str); pushed like a message", push=True),
]


def _logged_in_script_csrf(view):
    """The page script's token, checked once someone is logged in (else the view's 401 says why)."""

    @functools.wraps(view)
    def checked(*args, **kwargs):
        if tidings.current_identity() is not None:
            check_script_csrf()
        return view(*args, **kwargs)

    return checked


def _per_stream_user() -> str:
    who = tidings.current_identity()
    return f"user:{who.user_id}" if who else per_user()


tidings = Tidings(
    kinds=KINDS,
    stream_decorators=[
        limiter.limit(
            setting("STREAM_RATE"),
            key_func=_per_stream_user,
            error_message=lambda: gettext("too many stream connections; slow down"),
        )
    ],
    # The page script's POST /presence: its token in X-CSRFToken (the blueprint is exempt from
    # CSRFProtect, app/factory.py), at most PRESENCE_RATE per user.
    presence_decorators=[
        _logged_in_script_csrf,
        limiter.limit(
            setting("PRESENCE_RATE"),
            key_func=_per_stream_user,
            error_message=lambda: gettext("too many presence changes; slow down"),
        ),
    ],
)


@tidings.identity_loader
def stream_identity() -> Identity | None:
    """The request's user and login: the session's login looked up without loading the user;
    a request carrying only a remember-me cookie goes through Flask-Login as pages do."""
    token = session_login()
    user_id = user_id_of_login(token) if token is not None else None
    if user_id is not None:
        return Identity(user_id, token)
    if current_user.is_authenticated:
        return Identity(current_user.id, current_user.login_token)
    return None


@tidings.login_checker
def still_open(tokens: Collection[str]) -> set[str]:
    """Carried streams whose login was revoked meanwhile are closed."""
    return open_logins(tokens)
