"""Starting background tasks: a ``Task`` row, then an RQ job with the same id."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import redis
import sqlalchemy as sa
from flask import Flask, current_app
from rq import Callback, Queue
from sqlalchemy.exc import IntegrityError

from app.extensions import db
from app.models import Task, User, utcnow
from app.notifications import tidings

log = logging.getLogger(__name__)


def export_path(app: Flask, user_id: int, task_id: str) -> Path:
    """Where the export file of one task lives."""
    return Path(app.config["EXPORT_DIR"]) / str(user_id) / f"{task_id}.json"


def download_url(task_id: str) -> str:
    """The owner's download link of a finished export (``messages.download_export``)."""
    return f"/exports/{task_id}"


class TaskAlreadyRunning(Exception):
    """The user already has an active task of that kind."""


class TaskNotStarted(Exception):
    """The job could not be queued (Redis unreachable)."""


def task_queue() -> Queue:
    """The app's RQ queue (synchronous when TASKS_RUN_INLINE is set, as in unit tests)."""
    return Queue(
        current_app.config["TASK_QUEUE"],
        connection=queue_connection(),
        is_async=not current_app.config.get("TASKS_RUN_INLINE", False),
    )


def queue_connection() -> redis.Redis:
    """The Redis RQ's queue lives in: the notifications' own, or on a cluster ``QUEUE_REDIS_URL``'s
    (RQ needs a plain Redis); one client per process."""
    if not current_app.config.get("REDIS_CLUSTER"):
        return tidings.redis
    pid, client = current_app.extensions.get("rq.connection", (None, None))
    if pid != os.getpid():
        client = redis.Redis.from_url(
            current_app.config["QUEUE_REDIS_URL"], socket_connect_timeout=1, socket_timeout=2
        )
        current_app.extensions["rq.connection"] = (os.getpid(), client)
    return client


def active_task(user: User, name: str) -> Task | None:
    """The user's queued or running task of that kind."""
    return db.session.scalar(
        sa.select(Task).where(Task.user_id == user.id, Task.name == name, Task.status.in_(Task.ACTIVE))
    )


def launch_task(user: User, name: str, description: str, *args: Any) -> Task:
    """Record a task and enqueue ``workers.jobs.<name>(user.id, task_id, *args)``.

    Raises TaskAlreadyRunning (nothing enqueued) or TaskNotStarted (the task is marked failed).
    """
    if active_task(user, name) is not None:
        raise TaskAlreadyRunning(name)
    task = Task(id=str(uuid.uuid4()), name=name, description=description, user_id=user.id)
    db.session.add(task)
    try:
        db.session.commit()
    except IntegrityError:
        # A concurrent request won the partial unique index.
        db.session.rollback()
        raise TaskAlreadyRunning(name) from None
    try:
        task_queue().enqueue(
            f"workers.jobs.{name}",
            user.id,
            task.id,
            *args,
            job_id=task.id,
            job_timeout=600,
            result_ttl=3600,
            failure_ttl=86400,
            on_failure=Callback("workers.jobs.on_job_failure"),
            description=f"{description} for {user.username}",
        )
    except redis.RedisError as exc:
        log.warning("could not enqueue %s for user %s: %s", name, user.id, exc)
        task = db.session.get(Task, task.id)
        task.status, task.finished_at, task.error = "failed", utcnow(), "could not be queued"
        db.session.commit()
        raise TaskNotStarted(name) from exc
    return task
