"""``POST /api/v1/notifications``: a service stores and publishes a notification, as the site's
own ``tidings.notify()`` does (one transaction, published after commit, replayable), and
``GET /api/v1/openapi.json``.

Every refusal is a 4xx with ``{"error": …}`` (naming the recipient or field at fault) and
stores nothing: a batch is one transaction, all of it or none.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

import sqlalchemy as sa
from flask import Response, current_app, g, jsonify, request
from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError

from app.api import bp, keys
from app.api.schema import MAX_BATCH, JSONRefused, PublishRequest, openapi, strict_json
from app.extensions import csrf, db
from app.limits import client_network, limiter, setting
from app.models import IdempotentRequest, User, utcnow
from app.notifications import tidings
from flask_tidings import NotificationRefused

csrf.exempt(bp)  # a bearer key, not a cookie: nothing for another site to forge

IDEMPOTENCY_HOURS = 24
PUBLISHES = Counter("tidings_api_publishes", "Publish API requests, by key and outcome", ["key", "outcome"])


class Refused(Exception):
    """A request answered with ``status`` and ``{"error": message, **where}``."""

    def __init__(self, status: int, message: str, **where: str) -> None:
        super().__init__(message)
        self.status, self.message, self.where = status, message, where


def _key():
    """The request's live key (looked up once per request), or None."""
    if "api_key" not in g:
        g.api_key = keys.authenticate(request.headers.get("Authorization"))
    return g.api_key


def _per_key() -> str:
    """What the rate limit counts: a key that passed the check, else the client's network (so
    made-up keys neither escape the limit nor spend a real key's)."""
    key = _key()
    return f"api-key:{key.id}" if key is not None else f"api-address:{client_network()}"


def _batch_size() -> int:
    """What one request costs against the key's rate: a notification per recipient named."""
    try:
        to = json.loads(request.get_data()).get("to")
    except (ValueError, AttributeError):
        return 1
    return max(1, min(len(to), MAX_BATCH)) if isinstance(to, list) else 1


def _answer(status: int, body: dict, key_name: str, outcome: str) -> tuple[Response, int]:
    PUBLISHES.labels(key=key_name, outcome=outcome).inc()
    return jsonify(body), status


@bp.route("/notifications", methods=["POST"])
@limiter.limit(setting("API_RATE"), key_func=_per_key, cost=lambda: _batch_size())
def publish():
    """Store and publish one notification to each recipient (see docs/api.md)."""
    key = _key()
    if key is None:
        return _answer(401, {"error": "a valid key is needed: Authorization: Bearer tid_…"}, "-", "401")
    try:
        body, idempotency = _read()
        status, answer, outcome = _publish(key, body, idempotency)
    except Refused as refused:
        db.session.rollback()
        return _answer(
            refused.status, {"error": refused.message, **refused.where}, key.name, str(refused.status)
        )
    return _answer(status, answer, key.name, outcome)


def _read() -> tuple[PublishRequest, str | None]:
    """The request's body and Idempotency-Key, or Refused."""
    idempotency = request.headers.get("Idempotency-Key")
    if idempotency is not None and not _printable(idempotency):
        raise Refused(400, "Idempotency-Key must be 1 to 255 printable ASCII characters, no spaces")
    if request.mimetype != "application/json":
        raise Refused(415, "the body must be JSON (Content-Type: application/json)")
    try:
        raw = strict_json(request.get_data(cache=False))
    except JSONRefused as exc:
        raise Refused(400, f"the body is {exc}" if str(exc).startswith("not") else str(exc)) from None
    if not isinstance(raw, dict):
        raise Refused(422, 'the body must be a JSON object: {"to": …, "kind": …, "data": …}')
    try:
        return PublishRequest.model_validate(raw), idempotency
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"][:1]) or "body"
        raise Refused(422, f"{field}: {first['msg']}", field=field) from None


def _printable(value: str) -> bool:
    return 1 <= len(value) <= 255 and all("\x21" <= c <= "\x7e" for c in value)


def _publish(key, body: PublishRequest, idempotency: str | None) -> tuple[int, dict, str]:
    """Store and publish, or replay the first answer of a repeated Idempotency-Key."""
    if body.kind not in key.kind_names:
        raise Refused(403, f"this key may not send {body.kind}", field="kind")
    if body.kind not in current_app.extensions["service_kinds"]:  # dropped from the file since
        raise Refused(422, f"{body.kind} is no longer a kind services may send", field="kind")
    size = len(json.dumps(body.data, separators=(",", ":")))
    if size > current_app.config["API_MAX_DATA_BYTES"]:
        limit = current_app.config["API_MAX_DATA_BYTES"]
        raise Refused(422, f"data is {size} bytes of JSON; at most {limit}", field="data")
    names = body.recipients()
    allowed = key.recipient_names
    if allowed is not None:
        for name in names:
            if name not in allowed:
                raise Refused(403, f"this key may not send to {name}", to=name)
    fingerprint = hashlib.sha256(
        json.dumps(body.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()
    record = None
    if idempotency is not None:
        replay = _first_answer(key.id, idempotency, fingerprint)
        if replay is not None:
            return replay
        record = _claim(key.id, idempotency, fingerprint)
        if isinstance(record, tuple):  # a racing twin committed first: its answer
            return record
    users = {u.username: u for u in db.session.scalars(sa.select(User).where(User.username.in_(names)))}
    for name in names:
        if name not in users:
            raise Refused(422, f"no user named {name}: nothing was stored", to=name)
    recipients = [users[name] for name in names]
    tidings.lock(*recipients)
    try:
        events = [tidings.notify(user, body.kind, body.data) for user in recipients]
    except NotificationRefused as exc:
        raise Refused(422, str(exc), field="data") from None
    answer = {
        "notifications": [{"to": u.username, "id": e.id} for u, e in zip(recipients, events, strict=True)]
    }
    if record is not None:
        record.status, record.response_json = 201, json.dumps(answer)
    keys.note_use(key)
    db.session.commit()  # stores all, then publishes each
    return 201, answer, "created"


def _first_answer(key_id: int, idempotency: str, fingerprint: str) -> tuple[int, dict, str] | None:
    """The stored answer to an earlier request with this Idempotency-Key (within 24 h), if any."""
    since = utcnow() - timedelta(hours=IDEMPOTENCY_HOURS)
    earlier = db.session.scalar(
        sa.select(IdempotentRequest).where(
            IdempotentRequest.api_key_id == key_id, IdempotentRequest.key == idempotency
        )
    )
    if earlier is None:
        return None
    if earlier.created_at < since:  # expired: forget it, this request starts afresh
        db.session.delete(earlier)
        db.session.flush()
        return None
    if earlier.request_hash != fingerprint:
        raise Refused(422, "this Idempotency-Key was used with another request", field="Idempotency-Key")
    return earlier.status, json.loads(earlier.response_json), "replayed"


def _claim(key_id: int, idempotency: str, fingerprint: str):
    """Insert this request's Idempotency-Key first: a concurrent twin's insert waits on the
    unique pair until this transaction ends, then finds the answer (the row), or claims it if
    this one rolled back. Returns the row, or the twin's answer."""
    record = IdempotentRequest(api_key_id=key_id, key=idempotency, request_hash=fingerprint)
    db.session.add(record)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()  # nothing else is written yet: the twin's answer is all there is
        replay = _first_answer(key_id, idempotency, fingerprint)
        if replay is None:
            raise Refused(409, "a request with this Idempotency-Key is in progress; retry") from None
        return replay
    return record


@bp.route("/openapi.json")
def openapi_document():
    """The API's OpenAPI document, made from the models the view validates with."""
    document = openapi()
    document["servers"] = [{"url": request.host_url.rstrip("/")}]
    return jsonify(document)


@bp.errorhandler(413)
def too_large(exc):
    return jsonify(error="the body is over 64 KB"), 413
