"""The ``tidings`` blueprint: ``GET /stream`` (Server-Sent Events), ``GET /notifications?since=``
and ``POST /presence`` (whether the browser's tabs are looking)."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from flask import Blueprint, Response, current_app, g, jsonify, request

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


# On a 503 that no retry can mend (a server that cannot hold streams: `flask run`, a sync
# worker), this header says why; the page script then polls /notifications instead.
UNAVAILABLE_HEADER = "X-Tidings-Unavailable"


def cannot_stream(message: str) -> Response:
    """503: this server can never hold a stream; the page falls back to polling."""
    log.critical("%s", message)
    response = json_error(503, message)
    response.headers[UNAVAILABLE_HEADER] = message
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
        return jsonify([event.to_dict() for event in tidings.current_store.since_time(who.user_id, since)])

    def stream():
        """Server-Sent Events of the current user's notifications, with replay from a cursor.

        The view checks what it can answer, then opens the stream (``OpeningStream``: a place
        under the cap, the subscription, the replay) and returns the response that hands the
        connection to this worker's streams.
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
            return cannot_stream(str(exc))
        handover = request.environ.get(ENVIRON_KEY)
        if handover is None:
            return cannot_stream(NO_HANDOVER)
        if handover.refusal is not None:
            log.info("refused a stream: %s", handover.refusal)
            return _unavailable(handover.refusal)
        if request.method == "HEAD":
            return Response(content_type=OpeningStream.CONTENT_TYPE, headers=OpeningStream.HEADERS)
        opening = OpeningStream(state, who.user_id, who.login, cursor or 0)
        refusal = opening.open()
        if refusal is not None:
            return refusal
        return opening.response()

    def presence():
        """``{"looking": true|false}``: whether a tab of this login's browser is visible. The
        leader tab says so on each change (debounced) and whenever its stream (re)opens."""
        who = tidings.current_identity()
        if who is None:
            return json_error(401, "log in to say you are here")
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("looking"), bool):
            return json_error(400, 'the body must be JSON: {"looking": true} or {"looking": false}')
        if not tidings.set_looking(who, body["looking"]):
            return json_error(503, "presence is unavailable for a moment")
        return "", 204

    bp.teardown_request(give_back_unopened)
    for decorate in tidings.stream_decorators:
        stream = decorate(stream)
    for decorate in tidings.presence_decorators:
        presence = decorate(presence)
    bp.add_url_rule("/stream", "stream", stream)  # GET, and HEAD: the page's probe after a refusal
    bp.add_url_rule("/presence", "presence", presence, methods=["POST"])
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


class OpeningStream:
    """One stream from the view to the hand-over: the states ``opening`` → ``handed over`` (its
    socket now belongs to this worker's ``Streams``, live.py) or ``given back``.

    The view calls ``open()``: it holds a place under the per-user cap, subscribes to the user's
    channel, then reads the store above the cursor (subscribing first: whatever commits after
    the read arrives live and waits in the subscription's mailbox). ``response()`` is what the
    view returns; once Flask has finished it (after_request handlers ran, headers are final)
    the server calls it, and it writes the head, ``retry:`` and the replay and hands the socket
    over. A stream that never got there (an error after the view) is given back when the
    request ends, releasing its subscription and its place under the cap.
    """

    CONTENT_TYPE = "text/event-stream; charset=utf-8"
    HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    def __init__(self, state, user_id: int, login: str | None, cursor: int) -> None:
        self.state, self.user_id, self.login, self.cursor = state, user_id, login, cursor
        self.streams = state.streams
        self.sub = self.lease = None
        self.body = b""
        self.state_name = "opening"

    def open(self) -> Response | None:
        """Take a place, subscribe, read the replay; None, or the JSON refusal to answer instead."""
        # No database connection is held while Redis is asked (a session loaded through the
        # remember-me cookie gives its back), or a burst of connects overflows the pool. Most
        # connects never made an ORM session: none is made just to close it.
        close_database_session()
        streams = self.streams
        if streams.full:
            log.warning("refused a stream: this worker holds %d, its limit", len(streams))
            return _unavailable("this server holds all the streams it can; try again shortly")
        g._tidings_opening = self  # given back when the request ends, unless handed over
        self.lease = streams.cap.acquire(self.user_id)
        if self.lease is None:
            return _refused(
                429, f"you have {streams.cap.limit} notification streams open already; close a tab"
            )
        self.sub = streams.hub.subscribe(self.user_id, self.login)
        try:
            backlog = self.state.store.since_id(self.user_id, self.cursor)
        except Exception:
            self.give_back()
            log.exception("could not read the notification store for a stream")
            return _unavailable("notifications are unavailable for a moment")
        self.unseen = Unseen(self.cursor)
        retry = f"retry: {current_app.config['TIDINGS_RETRY_MS']}\n\n".encode()
        self.body = retry + (self.unseen.frames(backlog) or b": connected\n\n")
        return None

    def response(self) -> StreamResponse:
        """The response that hands the connection over when the server calls it."""
        return StreamResponse(self)

    def hand_over(self, environ, head: bytes) -> None:
        """Give the socket, with ``head`` and the replay to write first, to this worker's streams.
        HandoverRefused (the stream given back) when the connection cannot be taken."""
        streams = self.streams
        try:
            environ[ENVIRON_KEY].take(
                streams, lambda fd: streams.adopt(self.sub, fd, self.unseen, head + self.body, self.lease)
            )
        except BaseException:
            self.give_back()
            raise
        self.state_name = "handed over"  # closing the stream releases the subscription and the lease

    def give_back(self) -> None:
        """Release the subscription and the place under the cap (idempotent; not once handed over)."""
        if self.state_name != "opening":
            return
        self.state_name = "given back"
        if self.sub is not None:
            self.streams.hub.unsubscribe(self.sub)
        if self.lease is not None:
            self.streams.cap.release(self.user_id, self.lease)


class StreamResponse(Response):
    """The /stream response: rather than give gunicorn a body, it takes the socket over.

    The server calls a response once Flask is done with it and while the request context still
    stands. This one writes nothing through gunicorn: it calls ``start_response`` (so
    middleware sees a 200), hands the connection over (``OpeningStream.hand_over``, through the
    worker's ``Handover``, gunicorn.py) and returns an empty body.
    """

    # Hop-by-hop or length headers this response must not carry: its body ends when it closes.
    _DROPPED = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive"})

    def __init__(self, opening: OpeningStream) -> None:
        super().__init__(content_type=OpeningStream.CONTENT_TYPE, headers=OpeningStream.HEADERS)
        self.opening = opening

    def __call__(self, environ, start_response):
        try:
            self.opening.hand_over(environ, self._head())
        except HandoverRefused as exc:
            return _unavailable(str(exc))(environ, start_response)
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


def give_back_unopened(exc: BaseException | None = None) -> None:
    """Teardown: a stream opened by the view but never handed over releases what it holds."""
    opening = g.pop("_tidings_opening", None)
    if opening is not None:
        opening.give_back()


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
