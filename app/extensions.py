"""Flask extensions, created once without an app and bound in ``create_app``."""

from __future__ import annotations

import logging
import os

import redis
from flask import Flask, current_app
from flask_bootstrap import Bootstrap5
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

from app.tally import FailureTally

# Named constraints keep Alembic migrations identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


db = SQLAlchemy(model_class=Base)
migrate = Migrate()
login = LoginManager()
csrf = CSRFProtect()
bootstrap = Bootstrap5()


class Realtime:
    """Owns the per-process Redis client and notification hub.

    Both are created on first use, so nothing exists before gunicorn forks, and a
    process that forked after creating them (a pid change) builds fresh ones.
    """

    key = "tidings.realtime"

    def init_app(self, app: Flask) -> None:
        """Attach an empty per-app state; take the streams a stopping worker carries here."""
        from app import succession
        from app.notifications.live import CARRIED

        state = app.extensions[self.key] = _RealtimeState(app)
        succession.receive(CARRIED, lambda items: state.streams.carry_in(items))

    @staticmethod
    def state(app: Flask | None = None) -> _RealtimeState:
        """The state of ``app`` (default: the current app)."""
        return (app or current_app).extensions[Realtime.key]

    @property
    def redis(self) -> redis.Redis:
        """This process's Redis client for commands and publishing."""
        return self.state().redis

    @property
    def hub(self):
        """This process's notification hub (one pub/sub connection, one per master on a cluster)."""
        return self.state().hub

    @property
    def queue_redis(self) -> redis.Redis:
        """The Redis RQ's queue lives in."""
        return self.state().queue_redis

    def publish(self, channel: str, message: str) -> None:
        """PUBLISH, or SPUBLISH on a cluster (the channel's messages stay on its shard)."""
        if self.state().app.config.get("REDIS_CLUSTER"):
            self.redis.spublish(channel, message)
        else:
            self.redis.publish(channel, message)

    @property
    def streams(self):
        """This process's open streams (see ``app.notifications.live``)."""
        return self.state().streams


class _RealtimeState:
    def __init__(self, app: Flask) -> None:
        self.app = app
        self._pid = os.getpid()
        self._redis: redis.Redis | None = None
        self._queue_redis: redis.Redis | None = None
        self._hub = None
        self._streams = None
        self.publish_failures = FailureTally(logging.getLogger("app.notifications.store"), "publish to Redis")

    def _forked(self) -> None:
        if self._pid != os.getpid():
            self._pid, self._redis, self._hub, self._streams = os.getpid(), None, None, None
            self._queue_redis = None
            self.publish_failures = FailureTally(self.publish_failures.log, "publish to Redis")

    @property
    def redis(self) -> redis.Redis:
        self._forked()
        if self._redis is None and self.app.config.get("REDIS_CLUSTER"):
            # Per node a pool of at most 8, as below; MOVED and failovers are redis-py's to follow.
            self._redis = redis.RedisCluster.from_url(
                self.app.config["REDIS_URL"],
                max_connections=8,
                socket_connect_timeout=1,
                socket_timeout=2,
                health_check_interval=30,
            )
        if self._redis is None:
            # Fail fast, no retries: a send must not hang while Redis is away; replay covers it.
            # A small pool that greenlets wait for: a burst of connects (a deploy) or sends must
            # not open a Redis connection per request; Redis connections stay flat in traffic.
            pool = redis.BlockingConnectionPool.from_url(
                self.app.config["REDIS_URL"],
                max_connections=8,
                timeout=2,
                socket_connect_timeout=1,
                socket_timeout=2,
                health_check_interval=30,
            )
            self._redis = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        return self._redis

    @redis.setter
    def redis(self, client: redis.Redis) -> None:
        self._forked()
        self._redis = client

    @property
    def queue_redis(self) -> redis.Redis:
        """The plain Redis that RQ's queue lives in (``QUEUE_REDIS_URL``; REDIS_URL's by default)."""
        if not self.app.config.get("REDIS_CLUSTER"):
            return self.redis
        self._forked()
        if self._queue_redis is None:
            self._queue_redis = redis.Redis.from_url(
                self.app.config["QUEUE_REDIS_URL"], socket_connect_timeout=1, socket_timeout=2
            )
        return self._queue_redis

    @property
    def hub(self):
        self._forked()
        if self._hub is None and self.app.config.get("REDIS_CLUSTER"):
            from app.notifications.shards import ShardedHub

            self._hub = ShardedHub.for_app(self.app)
        if self._hub is None:
            from app.notifications.hub import Hub

            self._hub = Hub.for_app(self.app)
        return self._hub

    @property
    def streams(self):
        self._forked()
        if self._streams is None:
            from app.notifications.live import Streams

            self._streams = Streams.for_app(self.app, self.hub, self.redis)
        return self._streams

    @property
    def hub_started(self) -> bool:
        """Whether this process has a hub (without creating one)."""
        return self._hub is not None and self._pid == os.getpid()


realtime = Realtime()
