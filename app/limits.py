"""Rate limits (Flask-Limiter, counted in Redis so every worker and host shares them).

Each limit is a setting (README, "Configuration"); ``RATELIMIT_ENABLED=0`` turns them all
off. Over a limit a script client gets ``429`` JSON with ``Retry-After`` (the errors
blueprint); a page with a form gets the form back with the error on it, also ``429``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from flask import Response, current_app, make_response, request
from flask_limiter import Limiter, RequestLimit
from flask_limiter.util import get_remote_address
from flask_login import current_user

limiter = Limiter(key_func=get_remote_address)


def setting(name: str) -> Callable[[], str]:
    """A limit read from the app's configuration when a request is checked."""
    return lambda: current_app.config[name]


def per_user() -> str:
    """The logged-in user (or, before login is checked, the client address)."""
    if current_user.is_authenticated:
        return f"user:{current_user.id}"
    return f"address:{get_remote_address()}"


def per_account() -> str:
    """The account a login form names, whoever sends it (guessing one password from many addresses)."""
    return "account:" + (request.form.get("username") or "").strip().lower()[:64]


def retry_after(limit: RequestLimit) -> int:
    """Seconds until ``limit`` lets the next request through."""
    return max(1, math.ceil(limit.reset_at - time.time()))


def form_error(render: Callable[[str], str], what: str) -> Callable[[RequestLimit], Response | None]:
    """An ``on_breach`` answer for a page: ``render(message)`` (the form, with the error on it), 429.

    Script clients (``Accept: application/json``) get the errors blueprint's JSON instead.
    """

    def on_breach(limit: RequestLimit) -> Response | None:
        from app.errors import wants_json

        if wants_json():
            return None
        seconds = retry_after(limit)
        message = f"Too many {what}. Please try again in {seconds} seconds."
        response = make_response(render(message), 429)
        response.headers["Retry-After"] = str(seconds)
        return response

    return on_breach
