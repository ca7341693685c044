"""``GET /stream`` (Server-Sent Events) and ``GET /notifications?since=`` (polling)."""

from __future__ import annotations

import logging
import math

import sqlalchemy as sa
from flask import Response, current_app, g, jsonify, request, session
from flask_login import current_user

from app.errors import json_error
from app.extensions import db, realtime
from app.limits import limiter, per_user, setting
from app.models import Notification, user_id_of_login
from app.notifications import bp
from app.notifications.hub import StreamingUnavailable
from app.notifications.live import Unseen
from app.notifications.store import stored_events
from app.server import ENVIRON_KEY, HandoverRefused

log = logging.getLogger(__name__)


@bp.route("/notifications")
def notifications():
    """The user's notifications newer than ``since`` (Unix seconds), oldest first."""
    if not current_user.is_authenticated:
        return json_error(401, "log in to read notifications")
    raw = request.args.get("since", "0")
    try:
        since = float(raw)
    except ValueError:
        return json_error(400, "'since' must be a number of seconds")
    if not math.isfinite(since):
        return json_error(400, "'since' must be a finite number")
    rows = db.session.scalars(
        sa.select(Notification)
        .where(Notification.user_id == current_user.id, Notification.timestamp > since)
        .order_by(Notification.timestamp, Notification.id)
    )
    return jsonify([row.to_dict() for row in rows])


def _cursor() -> int | None:
    """The resume cursor: ``Last-Event-ID`` header, else ``?last_event_id=``; ValueError if bad."""
    raw = request.headers.get("Last-Event-ID")
    if raw is None or raw.strip() == "":
        raw = request.args.get("last_event_id")
    if raw is None or raw.strip() == "":
        return None
    raw = raw.strip()
    if not raw.isdigit() or len(raw) > 18:
        raise ValueError(raw)
    return int(raw)


def stream_login() -> tuple[int, str] | None:
    """The request's (user id, login token), or None when nobody is logged in.

    The session's login is checked by the same rule as Flask-Login's loader, but without
    loading the user (``user_id_of_login``): a deploy reconnects every stream at once. A
    request that carries only a remember-me cookie goes through Flask-Login as pages do.
    """
    if "stream_login" not in g:
        found = None
        token = session.get("_user_id")
        user_id = user_id_of_login(token) if token is not None else None
        if user_id is not None:
            found = (user_id, token)
        elif current_user.is_authenticated:
            found = (current_user.id, current_user.login_token)
        g.stream_login = found
    return g.stream_login


def _per_stream_user() -> str:
    login = stream_login()
    return f"user:{login[0]}" if login else per_user()


@bp.route("/stream")
@limiter.limit(
    setting("STREAM_RATE"), key_func=_per_stream_user, error_message="too many stream connections; slow down"
)
def stream():
    """Server-Sent Events of the logged-in user's notifications, with replay from a cursor."""
    login = stream_login()
    if login is None:
        return json_error(401, "log in to open the notification stream")
    try:
        cursor = _cursor()
    except ValueError:
        return json_error(400, "the event id to resume from must be a non-negative integer")
    try:
        realtime.hub  # noqa: B018 - raises StreamingUnavailable in a process gevent has not patched
    except StreamingUnavailable as exc:
        log.critical("%s", exc)
        return json_error(503, str(exc))
    handover = request.environ.get(ENVIRON_KEY)
    if handover is None:
        log.critical("%s", NO_HANDOVER)
        return json_error(503, NO_HANDOVER)
    if handover.refusal is not None:
        log.info("refused a stream: %s", handover.refusal)
        return _unavailable(handover.refusal)
    if request.method == "HEAD":
        return Response(content_type=StreamHandover.CONTENT_TYPE, headers=StreamHandover.HEADERS)
    return StreamHandover(*login, cursor or 0)


NO_HANDOVER = (
    "/stream needs Tidings' gunicorn worker: start `gunicorn -c gunicorn.conf.py wsgi:app` "
    "(or `make run`), whose worker_class lets a stream keep its connection."
)


class StreamHandover(Response):
    """The /stream response: rather than give gunicorn a body, it takes the socket over.

    The server calls a response once Flask is done with it (after_request handlers ran,
    headers are final) and while the request context still stands. This one then subscribes
    to the user's channel, reads the store (subscribing first: whatever commits after the
    read is live), calls ``start_response`` (so middleware sees a 200), takes the connection
    through the worker's ``Handover`` (app/server.py), writes the head, ``retry:`` and the
    replay itself, hands the socket to this worker's ``Streams`` and returns an empty body.
    The request context, its database session and the greenlet then end as for any request.
    """

    CONTENT_TYPE = "text/event-stream; charset=utf-8"
    HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    # Hop-by-hop or length headers this response must not carry: its body ends when it closes.
    _DROPPED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})

    def __init__(self, user_id: int, login: str | None, cursor: int) -> None:
        super().__init__(content_type=self.CONTENT_TYPE, headers=self.HEADERS)
        self.user_id, self.login, self.cursor = user_id, login, cursor

    def __call__(self, environ, start_response):
        # No database connection is held while Redis is asked (a session loaded through the
        # remember-me cookie gives its back), or a burst of connects overflows the pool. Most
        # connects never made an ORM session: none is made just to close it.
        if db.session.registry.has():
            db.session.close()
        streams = realtime.streams
        if streams.full:
            log.warning("refused a stream: this worker holds %d, its limit", len(streams))
            return _unavailable("this server holds all the streams it can; try again shortly")(
                environ, start_response
            )
        lease = streams.cap.acquire(self.user_id)
        if lease is None:
            return _refused(
                429, f"you have {streams.cap.limit} notification streams open already; close a tab"
            )(environ, start_response)
        sub = streams.hub.subscribe(self.user_id, self.login)

        def give_back() -> None:  # no-ops once the stream was adopted: closing it releases both
            streams.hub.unsubscribe(sub)
            streams.cap.release(self.user_id, lease)

        try:
            backlog = stored_events(self.user_id, self.cursor)
        except Exception:
            give_back()
            log.exception("could not read the notification store for a stream")
            return _unavailable("notifications are unavailable for a moment")(environ, start_response)
        unseen = Unseen(self.cursor)
        retry = f"retry: {current_app.config['SSE_RETRY_MS']}\n\n".encode()
        body = retry + (unseen.frames(backlog) or b": connected\n\n")
        try:
            environ[ENVIRON_KEY].take(
                streams, lambda fd: streams.adopt(sub, fd, unseen, self._head() + body, lease)
            )
        except HandoverRefused as exc:
            give_back()
            return _unavailable(str(exc))(environ, start_response)
        except Exception:
            give_back()
            raise
        start_response(self.status, self._headers())  # for middleware: gunicorn writes nothing now
        return []

    def _headers(self) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.headers.items() if k.lower() not in self._DROPPED]

    def _head(self) -> bytes:
        """The status line and headers, as gunicorn would have written them, ending the body at close."""
        lines = [f"HTTP/1.1 {self.status}"]
        lines += [f"{k}: {v}" for k, v in self._headers()]
        lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _refused(status: int, message: str) -> Response:
    """A JSON refusal of a stream that cannot open now; browsers retry with backoff."""
    response, status = json_error(status, message)
    response.status_code = status
    response.headers["Retry-After"] = "5"
    return response


def _unavailable(message: str) -> Response:
    """503: this server cannot hold the stream now."""
    return _refused(503, message)
