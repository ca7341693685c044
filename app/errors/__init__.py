"""Error pages in the site's look, and JSON errors for JSON routes."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Blueprint, Response, abort, render_template, request
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable

from app.responses import json_error, wants_json
from flask_tidings import FailureTally

bp = Blueprint("errors", __name__)
log = logging.getLogger(__name__)

# A database restart or failover fails the requests in flight: each is answered 503 (the
# browser's retry, or the user's, works a moment later), and the log gets one line per
# interval with a count, not a traceback per request.
_database = FailureTally(log, "reach the database")


# The errors people meet, in their language; werkzeug's own words are English only.
NAMES = {
    400: _l("Bad request"),
    401: _l("Not logged in"),
    403: _l("Forbidden"),
    404: _l("Not found"),
    405: _l("Method not allowed"),
    409: _l("Conflict"),
    413: _l("Too large"),
    429: _l("Too many requests"),
    500: _l("Something went wrong"),
    503: _l("Unavailable for a moment"),
}
DESCRIPTIONS = {
    400: _l("The request could not be understood."),
    401: _l("Please log in first."),
    403: _l("You may not do that."),
    404: _l("There is nothing here. Check the address, or go back."),
    405: _l("This address does not take that kind of request."),
    409: _l("That cannot be done right now."),
    413: _l("What was sent is too large."),
    429: _l("Too many requests. Please try again in a minute."),
    500: _l("Something went wrong on our side. Please try again."),
    503: _l("Please try again in a moment."),
}


def _handle_http(exc: HTTPException):
    if exc.response is not None:  # an answer made for this case (a rate-limited form page)
        return exc.response
    status = exc.code or 500
    message = exc.description
    if isinstance(exc, CSRFError):
        message = _("The form expired or was not sent from this site. Please try again.")
    elif not message or message == type(exc).description:  # werkzeug's generic English words
        message = DESCRIPTIONS.get(status, exc.name)
    if wants_json():
        response, status = json_error(status, str(message))
    else:
        name = NAMES.get(status, exc.name)
        response = render_template("errors/error.html", code=status, name=name, message=message)
    headers = exc.get_headers() if status in (405, 429) else []
    allow = [h for h in headers if h[0] in ("Allow", "Retry-After")]
    if status == 429 and not any(name == "Retry-After" for name, _value in allow):
        allow.append(("Retry-After", str(_seconds_to_retry())))
    return response, status, allow


def _seconds_to_retry() -> int:
    """When the limit this request broke lets it through (the limiter sends no headers itself)."""
    from app.limits import limiter, retry_after

    current = limiter.current_limit
    return retry_after(current) if current is not None else 60


def _handle_unexpected(exc: Exception):
    log.exception("unhandled error on %s %s", request.method, request.path)
    from app.extensions import db

    db.session.rollback()
    return _handle_http(InternalServerError())


@bp.app_errorhandler(sa.exc.OperationalError)
def handle_database_unavailable(exc: sa.exc.OperationalError):
    """The database is away (restarting, failing over, locked): 503 with Retry-After, not a 500."""
    from app.extensions import db
    from app.login_session import draw_without_user

    _database.failed(exc.orig or exc)
    try:
        db.session.rollback()
    except sa.exc.SQLAlchemyError:
        pass  # the connection is gone already; the pool replaces it
    draw_without_user()  # their navbar (and its stream attributes) would ask the database again
    response, status, _headers = _handle_http(
        ServiceUnavailable(_("The database is unavailable for a moment. Please try again."))
    )
    return response, status, [("Retry-After", "2")]


@bp.after_app_request
def note_database_back(response: Response) -> Response:
    """After a database outage, the first request answered without one says so in the log."""
    if _database.failing and response.status_code < 500:
        _database.succeeded()
    return response


@bp.app_errorhandler(HTTPException)
def handle_http_error(exc: HTTPException):
    """Every HTTP error: an HTML page, or JSON for script clients."""
    return _handle_http(exc)


@bp.app_errorhandler(Exception)
def handle_unexpected_error(exc: Exception):
    """A bug: logged with its traceback, the transaction rolled back, a 500 page shown."""
    return _handle_unexpected(exc)


@bp.before_app_request
def refuse_nul_characters():
    """400 for a NUL anywhere in the path, query or form: no database stores one (PostgreSQL
    refuses it outright), and no page of ours needs one."""
    values = [request.path]
    for multidict in (request.args, request.form):
        for key, value in multidict.items(multi=True):
            values += (key, value)
    if any("\x00" in value for value in values):
        abort(400, _("The request contains a NUL character, which is not allowed."))
