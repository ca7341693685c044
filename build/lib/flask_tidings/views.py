"""The ``tidings`` blueprint: ``GET /stream`` (Server-Sent Events) and ``GET /notifications?since=``."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from flask import Blueprint, Response, current_app, jsonify, request

from flask_tidings.handover import ENVIRON_KEY, HandoverRefused
from flask_tidings.hub import StreamingUnavailable
from flask_tidings.live import Unseen

if TYPE_CHECKING:
    from flask_tidings.extension import Tidings

log = logging.getLogger(__name__)


def json_error(status: int, message: str) -> Response:
    """A ``{"error": message}`` response: these routes' clients are scripts, never sent a page."""
    response = jsonify(error=message)
    response.status_code = status
    return response


def make_blueprint(tidings: Tidings) -> Blueprint:
    """The blueprint serving ``tidings``' routes and its browser client (``static/``)."""
    bp = Blueprint("tidings", __name__, static_folder="static", static_url_path="/tidings/static")

    @bp.route("/notifications")
    def notifications():
        """The user's notifications newer than ``since`` (Unix seconds), oldest first."""
        who = tidings.current_identity()
        if who is None:
            return json_error(401, "log in to read notifications")
        raw = request.args.get("since", "0")
        try:
            since = float(raw)
        except ValueError:
            return json_error(400, "'since' must be a number of seconds")
        if not math.isfinite(since):
            return json_error(400, "'since' must be a finite number")
        return jsonify([event.to_dict() for event in tidings.store.since_time(who.user_id, since)])

    def stream():
        """Server-Sent Events of the current user's notifications, with replay from a cursor.

        The view checks what it can answer now; the response it returns (``StreamHandover``)
        opens the stream: it subscribes, reads the store, takes the connection over.
        """
        who = tidings.current_identity()
        if who is None:
            return json_error(401, "log in to open the notification stream")
        try:
            cursor = _cursor()
        except ValueError:
            return json_error(400, "the event id to resume from must be a non-negative integer")
        state = current_app.extensions["tidings"]
        try:
            state.hub  # noqa: B018 - raises StreamingUnavailable in a process gevent has not patched
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
        return StreamHandover(state, who.user_id, who.login, cursor or 0)

    for decorate in tidings.stream_decorators:
        stream = decorate(stream)
    bp.add_url_rule("/stream", "stream", stream)
    return bp


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
    through the worker's ``Handover`` (gunicorn.py), writes the head, ``retry:`` and the
    replay itself, hands the socket to this worker's ``Streams`` and returns an empty body.
    The request context, its database session and the greenlet then end as for any request.
    """

    CONTENT_TYPE = "text/event-stream; charset=utf-8"
    HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    # Hop-by-hop or length headers this response must not carry: its body ends when it closes.
    _DROPPED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})

    def __init__(self, state, user_id: int, login: str | None, cursor: int) -> None:
        super().__init__(content_type=self.CONTENT_TYPE, headers=self.HEADERS)
        self.state, self.user_id, self.login, self.cursor = state, user_id, login, cursor

    def __call__(self, environ, start_response):
        # No database connection is held while Redis is asked (a session loaded through the
        # remember-me cookie gives its back), or a burst of connects overflows the pool. Most
        # connects never made an ORM session: none is made just to close it.
        close_database_session()
        streams = self.state.streams
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
            backlog = self.state.ext.store.since_id(self.user_id, self.cursor)
        except Exception:
            give_back()
            log.exception("could not read the notification store for a stream")
            return _unavailable("notifications are unavailable for a moment")(environ, start_response)
        unseen = Unseen(self.cursor)
        retry = f"retry: {current_app.config['TIDINGS_RETRY_MS']}\n\n".encode()
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


def close_database_session() -> None:
    """Give back the request's Flask-SQLAlchemy session, if it made one, before the stream opens."""
    ext = current_app.extensions.get("sqlalchemy")
    if ext is not None and ext.session.registry.has():
        ext.session.close()


def _refused(status: int, message: str) -> Response:
    """A JSON refusal of a stream that cannot open now; browsers retry with backoff."""
    response = json_error(status, message)
    response.headers["Retry-After"] = "5"
    return response


def _unavailable(message: str) -> Response:
    """503: this server cannot hold the stream now."""
    return _refused(503, message)
