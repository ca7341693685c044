"""The rule, and the delivery.

**The rule.** A notification of a kind declared ``push=True`` is, after the commit that stores
it, queued to be looked at again ``PUSH_DELAY_SECONDS`` later (RQ's scheduler), if its user has
a device subscribed. When it is due, the background worker pushes it only if it is still the
latest of its key (a newer one has its own turn: a phone that was off gets the latest, not
twenty), still unread, and no tab of the user is looking (``tidings.is_looking``). Never from
the web request.

**The delivery.** One encrypted (aes128gcm) push per device, with the site's VAPID signature,
a ``Topic`` per kind (the push service keeps only the latest for a device that is off) and a
``TTL``. Outcomes, counted in Redis for ``/metrics`` (``tidings_push_total{outcome}``):
``sent``; ``gone`` (404/410: the subscription is deleted); ``retried`` (429, 5xx, a timeout or
a refused connection: tried again later with backoff, honouring ``Retry-After``, up to
``MAX_ATTEMPTS``); ``failed`` (any other answer, or retries used up). Failures are logged once
a minute per kind of failure, never once per push.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from datetime import timedelta
from typing import Any

import redis
import requests
import sqlalchemy as sa
from flask import current_app
from flask_babel import gettext, ngettext
from pywebpush import WebPusher

from app.extensions import db
from app.i18n import in_language
from app.models import Login, Message, Notification, PushSubscription, User, utcnow
from app.notifications import tidings
from app.push import keys
from app.push.subscriptions import allowed, origin_of
from app.tasks import queue_connection, task_queue
from app.text import preview
from flask_tidings import Event

log = logging.getLogger(__name__)

STATS_KEY = "tidings:push:stats"
LOGGED_KEY = "tidings:push:logged:"
OUTCOMES = ("sent", "gone", "retried", "failed", "looking", "read", "superseded")
MAX_ATTEMPTS = 4
# A job stops starting deliveries after this long; the rest are retried (RQ kills it at JOB_TIMEOUT).
DEADLINE_SECONDS = 40
JOB_TIMEOUT = 60
PUSH_JOB = "workers.push.push_notification"
RETRY_JOB = "workers.push.retry_push"


# -- queued after commit (the web request, or whatever process notified) ---------------------


@tidings.on_pushable
def schedule(user_id: int, event: Event) -> None:
    """Queue the push of ``event`` for when it is due, if its user has a device subscribed."""
    with db.engine.connect() as conn:  # the caller's session has just committed: no SQL there
        subscribed = conn.scalar(sa.select(sa.exists().where(PushSubscription.user_id == user_id)))
    if not subscribed:
        return
    delay = current_app.config["PUSH_DELAY_SECONDS"]
    options = {"job_timeout": JOB_TIMEOUT, "result_ttl": 0, "failure_ttl": 86400}
    queue = task_queue()
    if delay > 0:
        queue.enqueue_in(timedelta(seconds=delay), PUSH_JOB, user_id, event.id, **options)
    else:
        queue.enqueue(PUSH_JOB, user_id, event.id, **options)


# -- when due (the background worker) -------------------------------------------------------


def push_notification(user_id: int, notification_id: int) -> str:
    """Push one stored notification to the user's devices if the rule still says so; returns
    what happened (``sent``, or why not)."""
    note = db.session.get(Notification, notification_id)
    if note is None or note.user_id != user_id:
        return count("superseded")
    user = db.session.get(User, user_id)
    if user is None:
        return count("superseded")
    devices = open_subscriptions(user_id)
    if not devices:
        return "no devices"
    if tidings.is_looking(user_id):
        return count("looking")
    topic = topic_of(note.key)
    sent = 0
    deadline = time.monotonic() + DEADLINE_SECONDS
    for device in devices:
        payload = texts(user, note, device.language)
        if payload is None:
            return count("read")
        if time.monotonic() > deadline:
            retry_later(device.id, payload, topic, 1, None)
            continue
        sent += deliver(device, payload, topic, attempt=1) == "sent"
    return f"sent to {sent} of {len(devices)} devices"


def retry_push(subscription_id: int, payload: dict, topic: str, attempt: int) -> str:
    """Try a push again (a push service was busy or away), unless someone is looking by now."""
    device = db.session.get(PushSubscription, subscription_id)
    if device is None:
        return "subscription gone"
    if tidings.is_looking(device.user_id):
        return count("looking")
    return deliver(device, payload, topic, attempt)


def open_subscriptions(user_id: int) -> list[PushSubscription]:
    """The user's subscriptions whose login is still open (a revoked one's were removed with it;
    an expired one's go now)."""
    rows = db.session.execute(
        sa.select(PushSubscription, Login.revoked_at, Login.created_at, Login.last_used_at)
        .join(Login, Login.id == PushSubscription.login_id)
        .where(PushSubscription.user_id == user_id)
    ).all()
    config = current_app.config
    born_after = utcnow() - timedelta(days=config["LOGIN_ABSOLUTE_DAYS"])
    used_after = utcnow() - timedelta(hours=config["LOGIN_IDLE_HOURS"])
    alive, ended = [], []
    for device, revoked_at, created_at, last_used_at in rows:
        if revoked_at is None and created_at > born_after and (last_used_at or created_at) > used_after:
            alive.append(device)
        else:
            ended.append(device.id)
    if ended:
        db.session.execute(sa.delete(PushSubscription).where(PushSubscription.id.in_(ended)))
        db.session.commit()
    return alive


# -- what a push says, in the recipient's language ------------------------------------------


def texts(user: User, note: Notification, device_language: str | None) -> dict[str, Any] | None:
    """The push's ``title``, ``body``, ``url`` (same-origin path) and ``tag``, in the user's
    saved language (else the device's when it subscribed); None when it is no longer news."""
    data = json.loads(note.payload_json)
    with in_language(user.language or device_language):
        if note.name == "new_message" and isinstance(data, dict):
            return _message_texts(user, data)
        if note.name == "announcement":
            return {
                "title": gettext("Announcement"),
                "body": preview(str(data), 200),
                "url": "/",
                "tag": "announcement",
            }
    return None


def _message_texts(user: User, data: dict) -> dict[str, Any] | None:
    message = db.session.get(Message, data.get("message_id"))
    if message is None or message.recipient_id != user.id or message.read_at is not None:
        return None
    sender = message.sender.username
    unread = user.unread_message_count()
    if unread > 1:
        title = ngettext("%(num)d new message", "%(num)d new messages", unread)
        body = f"{sender}: {preview(message.body, 140)}"
    else:
        title = gettext("Message from %(name)s", name=sender)
        body = preview(message.body, 140)
    return {"title": title, "body": body, "url": f"/messages/{sender}", "tag": "messages"}


def topic_of(key: str) -> str:
    """A push ``Topic`` for a store key (at most 32 URL-safe characters): a device that was off
    gets the latest push of the topic only."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


# -- one push to one device -----------------------------------------------------------------


def deliver(device: PushSubscription, payload: dict, topic: str, attempt: int) -> str:
    """Encrypt and send ``payload`` to ``device``; returns the outcome (see the module's doc)."""
    config = current_app.config
    origin = origin_of(device.endpoint)
    if not allowed(device.endpoint, config["PUSH_ALLOWED_ORIGINS"]):
        _delete(device)
        return count("gone", why=f"{origin} is no longer on PUSH_ALLOWED_ORIGINS")
    vapid = keys.current()
    headers = {**vapid.headers(origin), "Topic": topic, "Urgency": "normal"}
    try:
        response = WebPusher(device.info(), requests_session=_session()).send(
            json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
            headers,
            ttl=config["PUSH_TTL_SECONDS"],
            timeout=(min(5.0, config["PUSH_TIMEOUT_SECONDS"]), config["PUSH_TIMEOUT_SECONDS"]),
        )
    except requests.RequestException as exc:
        return _retry_or_fail(device, payload, topic, attempt, None, f"{origin}: {exc.__class__.__name__}")
    status = response.status_code
    if status in (200, 201, 202):
        device.last_push_at = utcnow()
        db.session.commit()
        return count("sent")
    if status in (404, 410):
        _delete(device)
        return count("gone")
    if status == 429 or status >= 500:
        return _retry_or_fail(
            device, payload, topic, attempt, response.headers.get("Retry-After"), f"{origin}: {status}"
        )
    return count("failed", why=f"{origin} answered {status}: {response.text[:200]!r}")


def _retry_or_fail(device, payload, topic, attempt: int, retry_after: str | None, why: str) -> str:
    if attempt >= MAX_ATTEMPTS:
        return count("failed", why=f"{why} (gave up after {attempt} attempts)")
    retry_later(device.id, payload, topic, attempt + 1, retry_after)
    return count("retried", why=why)


def retry_later(
    subscription_id: int, payload: dict, topic: str, attempt: int, retry_after: str | None
) -> None:
    """Queue another attempt: after ``Retry-After`` seconds (at most an hour) if the push service
    said, else 10 s, 40 s, 160 s."""
    try:
        delay = min(3600, max(1, int(retry_after))) if retry_after else 10 * 4 ** (attempt - 2)
    except ValueError:
        delay = 10 * 4 ** (attempt - 2)
    task_queue().enqueue_in(
        timedelta(seconds=delay),
        RETRY_JOB,
        subscription_id,
        payload,
        topic,
        attempt,
        job_timeout=JOB_TIMEOUT,
        result_ttl=0,
        failure_ttl=86400,
    )


def _delete(device: PushSubscription) -> None:
    db.session.delete(device)
    db.session.commit()


def _session() -> requests.Session:
    """One HTTP session per process, trusting ``REQUESTS_CA_BUNDLE`` or ``SSL_CERT_FILE`` if set."""
    pid, session = current_app.extensions.get("push.session", (None, None))
    if pid != os.getpid():
        session = requests.Session()
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
        if bundle:
            session.verify = bundle
        current_app.extensions["push.session"] = (os.getpid(), session)
    return session


# -- counted, and logged without flooding ---------------------------------------------------


def count(outcome: str, why: str | None = None) -> str:
    """Count an outcome in Redis (for /metrics, every process's together); a failure's ``why``
    is logged once a minute per outcome, the rest only counted."""
    client = queue_connection()
    try:
        client.hincrby(STATS_KEY, outcome, 1)
        first = why is not None and client.set(LOGGED_KEY + outcome, "1", nx=True, ex=60)
    except redis.RedisError as exc:  # counting must not fail a push
        log.warning("could not count a push outcome (%s): %s", outcome, exc)
        first = why is not None
    if first:
        log.warning(
            "push %s: %s (more in the next minute are only counted: tidings_push_total)", outcome, why
        )
    return outcome


def stats() -> dict[str, int]:
    """Every outcome's count so far."""
    raw = queue_connection().hgetall(STATS_KEY)
    counts = {outcome: 0 for outcome in OUTCOMES}
    for name, value in raw.items():
        counts[name.decode() if isinstance(name, bytes) else name] = int(value)
    return counts
