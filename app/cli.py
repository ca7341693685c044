"""Flask CLI commands: ``flask notify`` and the shell context."""

from __future__ import annotations

import click
import redis
import sqlalchemy as sa
from flask import Flask, current_app

from app.api.schema import JSONRefused, strict_json
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
            payload = strict_json(data)
        except JSONRefused as exc:
            raise click.ClickException(
                f"DATA is {exc}" if str(exc).startswith(("not", "nested")) else str(exc)
            ) from None
        try:
            event = tidings.notify(user, name, payload)
            db.session.commit()
        except NotificationRefused as exc:
            raise click.ClickException(str(exc)) from None
        click.echo(f"stored and published notification {event.id} ({name}) for {username}")

    @app.cli.group("keys")
    def keys_group() -> None:
        """Keys for services that publish through the API (docs/api.md)."""

    @keys_group.command("create")
    @click.argument("name")
    @click.option("--kinds", required=True, help="the kinds it may send, comma-separated")
    @click.option("--to", "recipients", help="the only usernames it may send to, comma-separated")
    def keys_create(name: str, kinds: str, recipients: str | None) -> None:
        """Make key NAME; its secret is printed once, on a line of its own, and kept nowhere."""
        from app.api import keys
        from app.models import ApiKey

        kind_names = [k.strip() for k in kinds.split(",") if k.strip()]
        unknown = [k for k in kind_names if k not in current_app.extensions["service_kinds"]]
        if not kind_names or unknown:
            raise click.ClickException(
                f"not kinds of NOTIFICATION_KINDS_FILE: {unknown or kinds!r} (site kinds are not for keys)"
            )
        if not 1 <= len(name) <= 64 or db.session.scalar(sa.select(ApiKey.id).where(ApiKey.name == name)):
            raise click.ClickException(f"a key needs a new name of 1 to 64 characters; {name!r} is not")
        to = [r.strip() for r in recipients.split(",") if r.strip()] if recipients else None
        _, token = keys.create(name, kind_names, to)
        db.session.commit()
        click.echo(
            f"key {name} may send {', '.join(kind_names)}" + (f" to {', '.join(to)}" if to else ""), err=True
        )
        click.echo("its secret, shown this once (send it as Authorization: Bearer …):", err=True)
        click.echo(token)

    @keys_group.command("list")
    def keys_list() -> None:
        """Every key: name, kinds, recipients, created, last used, revoked."""
        from app.models import ApiKey

        for key in db.session.scalars(sa.select(ApiKey).order_by(ApiKey.name)):
            used = key.last_used_at.isoformat(timespec="minutes") if key.last_used_at else "never"
            state = f"revoked {key.revoked_at.isoformat(timespec='minutes')}" if key.revoked_at else "live"
            click.echo(
                f"{key.name}\tkinds={key.kinds}\tto={key.recipients or '*'}\t"
                f"created={key.created_at.isoformat(timespec='minutes')}\tlast used={used}\t{state}"
            )

    @keys_group.command("revoke")
    @click.argument("name")
    def keys_revoke(name: str) -> None:
        """Revoke key NAME: its next request gets 401."""
        from app.models import ApiKey, utcnow

        key = db.session.scalar(sa.select(ApiKey).where(ApiKey.name == name))
        if key is None:
            raise click.ClickException(f"no key named {name!r}")
        key.revoked_at = key.revoked_at or utcnow()
        db.session.commit()
        click.echo(f"revoked {name}")

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
