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
from rq.timeouts import BaseTimeoutException

from app.extensions import db
from app.i18n import in_language
from app.models import Message, Notification, PushSubscription, User, utcnow
from app.notifications import tidings
from app.push import keys, subscriptions
from app.push.subscriptions import allowed, origin_of
from app.tasks import queue_connection, task_queue
from app.text import preview
from flask_tidings import Event, FailureTally

log = logging.getLogger(__name__)
# Queueing pushes while Redis is away: one line, then a count every 10 s, not a line per send.
_queue_failures = FailureTally(log, "queue a push")

STATS_KEY = "tidings:push:stats"
LOGGED_KEY = "tidings:push:logged:"
OUTCOMES = ("sent", "gone", "retried", "failed", "looking", "read", "superseded")
MAX_ATTEMPTS = 4
# A job stops starting deliveries after this long; the rest are retried (RQ kills it at JOB_TIMEOUT).
DEADLINE_SECONDS = 40
JOB_TIMEOUT = 60
JOB_OPTIONS = {"job_timeout": JOB_TIMEOUT, "result_ttl": 0, "failure_ttl": 86400}
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
    try:
        queue = task_queue()
        if delay > 0:
            queue.enqueue_in(timedelta(seconds=delay), PUSH_JOB, user_id, event.id, **JOB_OPTIONS)
        else:
            queue.enqueue(PUSH_JOB, user_id, event.id, **JOB_OPTIONS)
    except redis.RedisError as exc:  # Redis away: the notification waits in the store, unpushed
        _queue_failures.failed(exc)
    else:
        _queue_failures.succeeded()


# -- when due (the background worker) -------------------------------------------------------


def push_notification(user_id: int, notification_id: int, deferred: bool = False) -> str:
    """Push one stored notification to the user's devices if the rule still says so; returns
    what happened (``sent …``, or why not)."""
    subscriptions.remove_ended(user_id)
    devices = subscriptions.of_user(user_id)
    if not devices:
        return "no devices"
    due = _still_due(user_id, notification_id, may_wait=not deferred)
    if isinstance(due, str):
        return due
    user, note = due
    topic = topic_of(note.key)
    sent = 0
    deadline = time.monotonic() + DEADLINE_SECONDS
    for device in devices:
        try:
            payload = texts(user, note, device.language)
        except LookupError as exc:
            return count("failed", why=str(exc))
        if payload is None:
            return count("read")
        if time.monotonic() > deadline:
            retry_later(device, notification_id, topic, 2, None)
            count("retried", why="a job's deliveries ran past its deadline")
            continue
        sent += _deliver_one(device, payload, topic, notification_id) == "sent"
    return f"sent to {sent} of {len(devices)} devices"


def retry_push(subscription_id: int, endpoint: str, notification_id: int, topic: str, attempt: int) -> str:
    """Try one device's push again (its push service was busy or away), if the rule still says
    so and the subscription is still the one it was meant for."""
    device = db.session.get(PushSubscription, subscription_id)
    if device is None or device.endpoint != endpoint:
        return "subscription gone"
    due = _still_due(device.user_id, notification_id, may_wait=False)
    if isinstance(due, str):
        return due
    user, note = due
    payload = texts(user, note, device.language)
    if payload is None:
        return count("read")
    return _deliver_one(device, payload, topic, notification_id, attempt)


def _still_due(user_id: int, notification_id: int, may_wait: bool) -> tuple[User, Notification] | str:
    """The user and the notification if the rule still says "push": it is still the latest of its
    key and no tab is looking. A tab hidden just now may have left another device's tab looking
    (its worker says so within an interval): then, once, the push waits an interval more."""
    note = db.session.get(Notification, notification_id)
    user = db.session.get(User, user_id)
    if note is None or user is None or note.user_id != user_id:
        return count("superseded")  # a newer one of its key has its own turn
    here = tidings.presence_of([user_id])[user_id]
    if here.looking:
        return count("looking")
    if not here.settled and may_wait:
        wait = tidings.presence_settle_seconds + 1  # RQ's scheduler may run it a second early
        task_queue().enqueue_in(
            timedelta(seconds=wait), PUSH_JOB, user_id, notification_id, True, **JOB_OPTIONS
        )
        return "waits for presence to settle"
    return user, note


# -- what a push says, in the recipient's language ------------------------------------------


def texts(user: User, note: Notification, device_language: str | None) -> dict[str, Any] | None:
    """The push's ``title``, ``body``, ``url`` (same-origin path) and ``tag``, in the user's
    saved language (else the device's when it subscribed); None when it is no longer news."""
    data = json.loads(note.payload_json)
    if note.name not in ("new_message", "announcement"):
        raise LookupError(f"no push text for the kind {note.name!r}")
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


def _deliver_one(
    device: PushSubscription, payload: dict, topic: str, notification_id: int, attempt: int = 1
) -> str:
    """``deliver``, whatever it meets: one device's trouble never stops the others."""
    try:
        return deliver(device, payload, topic, notification_id, attempt)
    except BaseTimeoutException:  # RQ's job timeout: the job ends here, as RQ means it to
        raise
    except Exception as exc:  # noqa: BLE001 - counted and summed up in the log, never the job's end
        db.session.rollback()
        return count("failed", why=f"{origin_of(device.endpoint)}: {exc.__class__.__name__}: {exc}")


def deliver(device: PushSubscription, payload: dict, topic: str, notification_id: int, attempt: int) -> str:
    """Encrypt and send ``payload`` to ``device``; returns the outcome (see the module's doc)."""
    config = current_app.config
    origin = origin_of(device.endpoint)
    if not allowed(device.endpoint, config["PUSH_ALLOWED_ORIGINS"]):
        _delete(device)
        return count("gone", why=f"{origin} is no longer on PUSH_ALLOWED_ORIGINS")
    headers = {**keys.current().headers(origin), "Topic": topic, "Urgency": "normal"}
    timeout = config["PUSH_TIMEOUT_SECONDS"]
    try:
        response = WebPusher(device.info(), requests_session=_session()).send(
            json.dumps(payload, ensure_ascii=False, separators=(",", ":")),
            headers,
            ttl=config["PUSH_TTL_SECONDS"],
            timeout=(timeout, timeout),
        )
    except requests.RequestException as exc:
        return _retry_or_fail(
            device, notification_id, topic, attempt, None, f"{origin}: {exc.__class__.__name__}"
        )
    status = response.status_code
    if status in (200, 201, 202):
        device.last_push_at = utcnow()
        db.session.commit()
        return count("sent")
    if status in (404, 410):
        _delete(device)
        return count("gone")
    if status == 429 or status >= 500:
        retry_after = response.headers.get("Retry-After")
        return _retry_or_fail(device, notification_id, topic, attempt, retry_after, f"{origin}: {status}")
    return count("failed", why=f"{origin} answered {status}: {response.text[:200]!r}")


def _retry_or_fail(
    device, notification_id: int, topic: str, attempt: int, retry_after: str | None, why: str
) -> str:
    if attempt >= MAX_ATTEMPTS:
        return count("failed", why=f"{why} (gave up after {attempt} attempts)")
    retry_later(device, notification_id, topic, attempt + 1, retry_after)
    return count("retried", why=why)


def retry_later(
    device: PushSubscription, notification_id: int, topic: str, attempt: int, retry_after: str | None
) -> None:
    """Queue another attempt: after ``Retry-After`` seconds (at most an hour) if the push service
    said, else 10 s, 40 s, 160 s. It is decided afresh when due (``retry_push``)."""
    try:
        delay = min(3600, max(1, int(retry_after))) if retry_after else 10 * 4 ** (attempt - 2)
    except ValueError:
        delay = 10 * 4 ** (attempt - 2)
    task_queue().enqueue_in(
        timedelta(seconds=delay),
        RETRY_JOB,
        device.id,
        device.endpoint,
        notification_id,
        topic,
        attempt,
        **JOB_OPTIONS,
    )


def _delete(device: PushSubscription) -> None:
    db.session.delete(device)
    db.session.commit()


class _NoRedirects(requests.Session):
    """A push service's redirect is never followed: the allow-list says where pushes may go, and
    a 3xx is an answer like any other (counted as failed)."""

    def request(self, *args, **kwargs):
        kwargs["allow_redirects"] = False
        return super().request(*args, **kwargs)


def _session() -> requests.Session:
    """One HTTP session per process, trusting ``REQUESTS_CA_BUNDLE`` or ``SSL_CERT_FILE`` if set."""
    pid, session = current_app.extensions.get("push.session", (None, None))
    if pid != os.getpid():
        session = _NoRedirects()
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
