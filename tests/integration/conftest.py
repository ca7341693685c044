"""A live gunicorn+gevent server on real Redis, on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from harness.clients import WebUser
from harness.fakepush import FakePushService
from harness.servers import LiveServer, NginxServer, RedisServer, WorkerProcess, make_server_env
from harness.tools import NGINX, OPENSSL
from tests.conftest import need, reset_database

pytestmark = pytest.mark.integration

_names = itertools.count()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """``TEST_REDIS_URL`` (CI: a database of the machine's Redis, flushed first), or a private
    redis-server that lives for the session."""
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        redis.Redis.from_url(url).flushdb()
        yield url
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.kill()


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server_env(request, tmp_path_factory, redis_url) -> dict[str, str]:
    """Environment for a server: a migrated database and the test Redis."""
    tmp = tmp_path_factory.mktemp("server")
    if request.param == "sqlite":
        database_url = f"sqlite:///{tmp / 'tidings.db'}"
    else:
        database_url = request.getfixturevalue("postgres_url")
        reset_database(database_url)
    return make_server_env(tmp, database_url, redis_url)


@pytest.fixture(scope="module")
def sqlite_env(tmp_path_factory, redis_url) -> dict[str, str]:
    """Environment for servers whose tests are about the server, not the database: SQLite only."""
    tmp = tmp_path_factory.mktemp("server")
    return make_server_env(tmp, f"sqlite:///{tmp / 'tidings.db'}", redis_url)


@pytest.fixture(scope="module")
def server(server_env, tmp_path_factory):
    """One gunicorn for the module's tests."""
    live = LiveServer(server_env, tmp_path_factory.mktemp("log") / "gunicorn.log").start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def proxied(sqlite_env, tmp_path_factory):
    """gunicorn (trusting one proxy) behind Debian's nginx with deploy/nginx/tidings.conf."""
    need(NGINX, OPENSSL)
    logs = tmp_path_factory.mktemp("proxied")
    web = LiveServer({**sqlite_env, "TRUSTED_PROXIES": "1"}, logs / "gunicorn.log").start()
    nginx = NginxServer(tmp_path_factory.mktemp("nginx"), [f"127.0.0.1:{web.port}"]).start()
    yield web, nginx
    nginx.stop()
    web.stop()


@pytest.fixture
def make_user(server):
    """Register and log in fresh users through the real forms."""
    made: list[WebUser] = []

    def make(prefix: str = "user") -> WebUser:
        user = WebUser(server.url, f"{prefix}{next(_names)}")
        assert user.register().status_code == 302  # registering logs the user in
        made.append(user)
        return user

    yield make
    for user in made:
        user.close()


@pytest.fixture(scope="module")
def fake_push(tmp_path_factory) -> Iterator[FakePushService]:
    """A push service of our own (HTTPS on 127.0.0.1): ``fake_push.settings()`` points a site at it."""
    service = FakePushService(tmp_path_factory.mktemp("push")).start()
    yield service
    service.stop()


@contextlib.contextmanager
def web_and_worker(env: dict[str, str], logs: Path) -> Iterator[LiveServer]:
    """A gunicorn and a ``python -m workers`` on ``env`` (logs in ``logs``); yields the gunicorn."""
    web = LiveServer(env, logs / "gunicorn.log").start()
    try:
        worker = WorkerProcess(env, logs / "worker.log").start()
        try:
            yield web
        finally:
            worker.stop()
    finally:
        web.stop()
