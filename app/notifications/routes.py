"""``GET /stream`` (Server-Sent Events) and ``GET /notifications?since=`` (polling)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator

import sqlalchemy as sa
from flask import Flask, Response, current_app, jsonify, request
from flask_login import current_user

from app.auth.sessions import login_session_id
from app.errors import json_error
from app.extensions import db, realtime
from app.models import Notification
from app.notifications import bp
from app.notifications.events import Event
from app.notifications.hub import GeventRequired, Subscription
from app.notifications.store import stored_events

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


@bp.route("/stream")
def stream():
    """Server-Sent Events of the logged-in user's notifications, with replay from a cursor."""
    if not current_user.is_authenticated:
        return json_error(401, "log in to open the notification stream")
    try:
        cursor = _cursor()
    except ValueError:
        return json_error(400, "the event id to resume from must be a non-negative integer")
    try:
        hub = realtime.hub
    except GeventRequired as exc:
        log.critical("%s", exc)
        return json_error(503, str(exc))
    user_id = current_user.id
    # Subscribe before reading the store: whatever commits after the read is then live.
    sub = hub.subscribe(user_id, login_session_id())
    try:
        backlog = stored_events(user_id, cursor or 0)
    except Exception:
        hub.unsubscribe(sub)
        raise
    response = Response(
        _frames(current_app._get_current_object(), sub, cursor or 0, backlog),
        content_type="text/event-stream; charset=utf-8",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # The server closes the response however the stream ends, even before it began.
    response.call_on_close(lambda: hub.unsubscribe(sub))
    return response


def _frames(app: Flask, sub: Subscription, cursor: int, backlog: list[Event]) -> Iterator[str]:
    """The body of one stream. Runs after the request context is gone, holding no DB session."""
    heartbeat = app.config["SSE_HEARTBEAT_SECONDS"]
    yield f"retry: {app.config['SSE_RETRY_MS']}\n\n"
    unseen = _Unseen(cursor)
    yield unseen.frames(backlog) or ": connected\n\n"
    last_write = time.monotonic()
    while True:
        woke = sub.wait(max(0.0, last_write + heartbeat - time.monotonic()))
        if sub.closed:
            return
        if woke:
            events = sub.drain()
            if sub.resync:
                sub.resync = False
                events = _read_store(app, sub, cursor) + events
            chunk = unseen.frames(events)
            if chunk:
                yield chunk
                last_write = time.monotonic()
                continue
        if time.monotonic() - last_write >= heartbeat:
            # Also how a vanished client is noticed: this write fails and the stream ends.
            yield ": keepalive\n\n"
            last_write = time.monotonic()


def _read_store(app: Flask, sub: Subscription, since_id: int) -> list[Event]:
    with app.app_context():
        return stored_events(sub.user_id, since_id)


class _Unseen:
    """Filters one connection's events so that no stored id is sent twice or below the cursor.

    Per key it remembers the newest id sent; the store keeps one row per key and ids only
    grow, so an event is new exactly when its id beats both the cursor and that memory.
    """

    __slots__ = ("floor", "sent")

    def __init__(self, floor: int) -> None:
        self.floor = floor
        self.sent: dict[str, int] = {}

    def admit(self, event: Event) -> bool:
        """Whether ``event`` should be sent now (and remember it if so)."""
        if event.id is None:
            return True
        if event.id <= self.floor or event.id <= self.sent.get(event.key, 0):
            return False
        self.sent[event.key] = event.id
        return True

    def frames(self, events: list[Event]) -> str:
        """The SSE frames of the events that are new, concatenated."""
        return "".join(str(e) for e in events if self.admit(e))
