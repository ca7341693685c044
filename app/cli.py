"""Flask CLI commands: ``flask notify`` and the shell context."""

from __future__ import annotations

import json

import click
import sqlalchemy as sa
from flask import Flask

from app.extensions import db
from app.models import Message, Notification, Task, User


def init_app(app: Flask) -> None:
    """Register the commands and the ``flask shell`` context."""

    @app.shell_context_processor
    def shell_context() -> dict:
        return {
            "db": db,
            "sa": sa,
            "User": User,
            "Message": Message,
            "Notification": Notification,
            "Task": Task,
        }

    @app.cli.command("notify")
    @click.argument("username")
    @click.argument("name")
    @click.argument("data")
    def notify_command(username: str, name: str, data: str) -> None:
        """Store and publish notification NAME with JSON DATA for USERNAME."""
        from app.notifications.kinds import NotificationRefused
        from app.notifications.store import notify

        user = db.session.scalar(sa.select(User).where(User.username == username))
        if user is None:
            raise click.ClickException(f"no user named {username!r}")
        try:
            payload = json.loads(data, parse_constant=_reject, parse_float=_finite)
        except RecursionError:
            raise click.ClickException("DATA is nested too deeply") from None
        except ValueError as exc:
            raise click.ClickException(f"DATA is not valid JSON: {exc}") from None
        try:
            event = notify(user, name, payload)
        except NotificationRefused as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"stored and published notification {event.id} ({name}) for {username}")


def _reject(token: str):
    raise ValueError(f"{token} is not allowed")


def _finite(token: str) -> float:
    value = float(token)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{token[:20]} is out of range (numbers must be finite)")
    return value
