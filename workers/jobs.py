"""Background jobs. Each is a plain function taking ids and running inside an app context.

The app is built on first use inside the process that runs the job (RQ's forked work
horse), never at import time, so no database connection crosses a fork.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so
from flask import Flask, current_app, has_app_context

from app.extensions import db
from app.models import Message, Task, User, utcnow
from app.notifications import tidings
from app.tasks import download_url, export_path

log = logging.getLogger(__name__)

_app: Flask | None = None

# Progress is published on whole-percent changes only, at most this often.
PROGRESS_MIN_INTERVAL = 0.1


def get_app() -> Flask:
    """The current app (RQ's synchronous mode in tests), else one built for this process."""
    global _app
    if has_app_context():
        return current_app._get_current_object()
    if _app is None:
        from app import create_app

        _app = create_app()
    return _app


def preload_app() -> None:
    """Build the app in the worker itself: the jobs it runs in-process (pushes) use it, and the
    processes it forks (work horses, the scheduler) start with it built, each with a database
    pool of its own (SQLAlchemy's way after a fork: the parent's connections are left alone)."""
    global _app
    from app import create_app

    _app = create_app()
    app = _app

    def fresh_pool() -> None:
        with app.app_context():
            db.engine.dispose(close=False)

    os.register_at_fork(after_in_child=fresh_pool)


class ProgressReporter:
    """Stores and publishes ``task_progress`` for one task, throttled."""

    def __init__(self, task: Task, min_interval: float = PROGRESS_MIN_INTERVAL) -> None:
        self.task = task
        self.min_interval = min_interval
        self._last_percent = -1
        self._last_time = 0.0

    def payload(self, percent: int, **extra: Any) -> dict[str, Any]:
        """The ``task_progress`` data."""
        return {
            "task_id": self.task.id,
            "progress": percent,
            "description": self.task.description,
            "status": self.task.status,
            **extra,
        }

    def update(self, done: int, total: int) -> None:
        """Report ``done`` of ``total`` (below 100: the final report is ``finish``)."""
        percent = min(99, done * 100 // total) if total else 0
        now = time.monotonic()
        if percent == self._last_percent or now - self._last_time < self.min_interval:
            return
        self._last_percent, self._last_time = percent, now
        self.task.progress = percent
        tidings.notify(self.task.user, "task_progress", self.payload(percent))
        db.session.commit()

    def finish(self) -> None:
        """Mark the task finished and publish 100 with the download link."""
        self.task.status = "finished"
        self.task.progress = 100
        self.task.finished_at = utcnow()
        tidings.notify(
            self.task.user, "task_progress", self.payload(100, download_url=download_url(self.task.id))
        )
        db.session.commit()


def export_messages(user_id: int, task_id: str, language: str | None = None) -> str:
    """Write every message the user sent or received to a JSON file, reporting progress. Its
    title is in the user's saved language, else ``language`` (the page's that started it)."""
    from flask_babel import gettext as _

    from app.i18n import in_language

    app = get_app()
    with app.app_context():
        task = db.session.get(Task, task_id)
        if task is None or task.user_id != user_id:
            raise LookupError(f"no task {task_id} for user {user_id}")
        task.status = "running"
        reporter = ProgressReporter(task)
        db.session.commit()
        user = db.session.get(User, user_id)
        mine = sa.or_(Message.sender_id == user_id, Message.recipient_id == user_id)
        total = db.session.scalar(sa.select(sa.func.count(Message.id)).where(mine)) or 0
        slowdown = app.config.get("EXPORT_SLOWDOWN_SECONDS", 0.0)
        path = export_path(app, user_id, task_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".part")
        try:
            with partial.open("w", encoding="utf-8") as out:
                now = utcnow()
                with in_language(user.language or language):
                    title = _(
                        "Messages of %(name)s on Tidings, exported %(time)s UTC",
                        name=user.username,
                        time=now.strftime("%Y-%m-%d %H:%M"),
                    )
                head = json.dumps(
                    {"title": title, "user": user.username, "exported_at": now.isoformat()},
                    ensure_ascii=False,
                )
                out.write(head[:-1] + ', "messages": [\n')
                done = 0
                for row in _in_batches(mine):
                    out.write(("" if done == 0 else ",\n") + json.dumps(row))
                    done += 1
                    if slowdown:
                        time.sleep(slowdown)
                    reporter.update(done, total)
                out.write("\n]}\n")
            os.replace(partial, path)  # the download never sees a half-written file
        except BaseException:  # a failure, a timeout, a stop: no half-written file stays behind
            partial.unlink(missing_ok=True)
            raise
        reporter.finish()
        log.info("exported %d messages of user %s to %s", total, user_id, path)
        return str(path)


def _in_batches(condition, size: int = 500):
    """Messages matching ``condition`` in id order, as export dicts, a batch per query.

    Progress reports commit between rows; a commit would close a server-side cursor, so each
    batch is a fresh keyset query instead of one long-lived result.
    """
    last_id = 0
    while True:
        batch = db.session.scalars(
            sa.select(Message)
            .options(so.joinedload(Message.sender), so.joinedload(Message.recipient))
            .where(condition, Message.id > last_id)
            .order_by(Message.id)
            .limit(size)
        ).all()
        if not batch:
            return
        # Rendered now: the progress commits in between would expire the objects.
        rows = [m.to_dict() for m in batch]
        last_id = batch[-1].id
        yield from rows


def mark_failed(task_id: str, reason: str) -> None:
    """Mark a task failed and tell its owner's browser, whatever killed it."""
    app = get_app()
    with app.app_context():
        db.session.rollback()
        task = db.session.get(Task, task_id)
        if task is None or not task.active:
            return
        task.status = "failed"
        task.finished_at = utcnow()
        task.error = reason[:256]
        payload = ProgressReporter(task).payload(task.progress, error=task.error)
        tidings.notify(task.user, "task_progress", payload)
        db.session.commit()
        log.warning("task %s failed: %s", task_id, reason)


def on_job_failure(job, connection, exc_type, exc_value, tb) -> None:
    """RQ failure callback: the job raised, timed out, or was found abandoned."""
    mark_failed(job.id, f"{exc_type.__name__}: {exc_value}".strip().rstrip(":"))


def on_work_horse_killed(job, retpid, ret_val, rusage) -> None:
    """RQ hook: the process running the job died (killed, out of memory): its task fails and
    its half-written export goes."""
    if job.func_name == f"{__name__}.export_messages" and len(job.args) >= 2:
        user_id, task_id = job.args[:2]  # (and the language, since exports have a title)
        export_path(get_app(), user_id, task_id).with_suffix(".part").unlink(missing_ok=True)
    mark_failed(job.id, f"the worker process running it died (status {ret_val})")


def remove_expired_tasks(app: Flask) -> int:
    """Delete finished and failed tasks older than ``EXPORT_RETENTION_HOURS``: their rows, their
    export files and their stored ``task_progress`` notifications (so fresh tabs stop replaying
    them); and the publish API's idempotency records past their 24 h. Returns how many tasks went."""
    cutoff = utcnow() - timedelta(hours=app.config["EXPORT_RETENTION_HOURS"])
    with app.app_context():
        expired = db.session.scalars(
            sa.select(Task).where(Task.status.not_in(Task.ACTIVE), Task.finished_at < cutoff)
        ).all()
        for task in expired:
            export_path(app, task.user_id, task.id).unlink(missing_ok=True)
            tidings.forget(task.user_id, "task_progress", {"task_id": task.id})
            db.session.delete(task)
        # The publish API's idempotency keys are kept 24 h (app/api/routes.py).
        from app.api.routes import IDEMPOTENCY_HOURS
        from app.models import IdempotentRequest

        db.session.execute(
            sa.delete(IdempotentRequest).where(
                IdempotentRequest.created_at < utcnow() - timedelta(hours=IDEMPOTENCY_HOURS)
            )
        )
        db.session.commit()
        if expired:
            log.info("removed %d expired tasks and their exports", len(expired))
        return len(expired)


def send_password_reset(email: str, base_url: str, language: str | None = None) -> None:
    """Mail a password-reset link to the account that uses ``email``, if one does (the page that
    asked says the same either way): in the account's saved language, else the asking page's."""
    from flask_babel import gettext as _

    from app.auth.routes import reset_lifetime, reset_token
    from app.i18n import in_language
    from app.mail import send

    with get_app().app_context():
        user = db.session.scalar(sa.select(User).where(User.email == email))
        if user is None:
            log.info("a password reset was asked for an address no account uses")
            return
        link = f"{base_url}/auth/reset_password/{reset_token(user)}"
        with in_language(user.language or language):
            subject = _("Reset your Tidings password")
            body = _(
                "Hi %(name)s,\n\n"
                "Someone (we hope you) asked to reset your Tidings password. To choose a new one, open\n\n"
                "  %(link)s\n\n"
                "The link works once, for %(lifetime)s. Choosing a new password logs you out of\n"
                "every other browser. If you did not ask, ignore this mail: your password stays as it is.\n",
                name=user.username,
                link=link,
                lifetime=reset_lifetime(),
            )
        send(user.email, subject, body)
