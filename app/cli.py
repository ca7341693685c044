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
        from app.notifications.events import Event
        from app.notifications.store import notify

        user = db.session.scalar(sa.select(User).where(User.username == username))
        if user is None:
            raise click.ClickException(f"no user named {username!r}")
        try:
            payload = json.loads(data, parse_constant=_reject)
        except ValueError as exc:
            raise click.ClickException(f"DATA is not valid JSON: {exc}") from None
        try:
            Event.from_json(json.dumps({"name": name}))
        except ValueError:
            raise click.ClickException(f"{name!r} is not a usable notification name") from None
        event = notify(user, name, payload)
        click.echo(f"stored and published notification {event.id} ({name}) for {username}")


def _reject(token: str):
    raise ValueError(f"{token} is not allowed")
