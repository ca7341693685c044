"""Flask CLI commands: ``flask notify`` and the shell context."""

from __future__ import annotations

import json

import click
import redis
import sqlalchemy as sa
from flask import Flask, current_app

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
        from app.notifications import tidings
        from flask_tidings import NotificationRefused

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
            event = tidings.notify(user, name, payload)
            db.session.commit()
        except NotificationRefused as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"stored and published notification {event.id} ({name}) for {username}")

    @app.cli.group("limits")
    def limits_group() -> None:
        """Rate limits and login throttling."""

    @limits_group.command("lift")
    @click.option("--account", help="a username: its failed-login counters start afresh")
    @click.option("--address", help="a client address: its network's counters start afresh")
    def lift_command(account: str | None, address: str | None) -> None:
        """Lift login throttling on an account and/or a client network (IPv6: its /64)."""
        from app.auth.throttle import lift

        if not account and not address:
            raise click.UsageError("name --account, --address or both")
        if not current_app.config["RATELIMIT_ENABLED"]:
            raise click.ClickException("the limits are off here (RATELIMIT_ENABLED=0): nothing to lift")
        try:
            click.echo("lifted: " + ", ".join(lift(account=account, address=address)))
        except redis.RedisError as exc:
            raise click.ClickException(f"cannot reach the limits' storage: {exc}") from None

    @app.cli.command("follow")
    @click.argument("username")
    @click.option(
        "--count", type=int, default=0, help="stop after this many messages (0: follow until Ctrl-C)"
    )
    def follow_command(username: str, count: int) -> None:
        """Print every message on USERNAME's channel as it is published (one JSON per line).

        SUBSCRIBE on one Redis; on a cluster (REDIS_CLUSTER=1) SSUBSCRIBE on the node that
        owns the channel's slot, where ``PSUBSCRIBE 'notifications:*'`` sees nothing.
        """
        import redis

        from app.notifications import tidings

        user = db.session.scalar(sa.select(User).where(User.username == username))
        if user is None:
            raise click.ClickException(f"no user named {username!r}")
        mode = "sharded, on the node that owns it" if app.config["REDIS_CLUSTER"] else "on"
        try:
            click.echo(
                f"following {tidings.channel(user)} ({username}) {mode} {tidings.where()}; Ctrl-C stops",
                err=True,
            )
            seen = 0
            for message in tidings.follow(user):
                if message is not None:
                    click.echo(message)
                    seen += 1
                if count and seen >= count:
                    break
        except redis.RedisError as exc:
            raise click.ClickException(f"Redis: {exc}") from None
        except KeyboardInterrupt:
            pass


def _reject(token: str):
    raise ValueError(f"{token} is not allowed")


def _finite(token: str) -> float:
    value = float(token)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{token[:20]} is out of range (numbers must be finite)")
    return value
