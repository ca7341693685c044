"""A live gunicorn+gevent server on real Redis, on SQLite and (in CI) PostgreSQL."""

from __future__ import annotations

import itertools

import pytest
import redis

from tests.conftest import require_env, reset_database
from tests.helpers import WebUser
from tests.servers import LiveServer, NginxServer, make_server_env

pytestmark = pytest.mark.integration

_names = itertools.count()


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The machine's Redis, in a dedicated database the suite flushes."""
    url = require_env("TEST_REDIS_URL", "Redis integration")
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def server_env(request, tmp_path_factory, redis_url) -> dict[str, str]:
    """Environment for a server: a migrated database and the test Redis."""
    tmp = tmp_path_factory.mktemp("server")
    if request.param == "sqlite":
        database_url = f"sqlite:///{tmp / 'tidings.db'}"
    else:
        database_url = require_env("TEST_DATABASE_URL", "PostgreSQL")
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
        assert user.register().status_code == 302
        made.append(user.login())
        return user

    yield make
    for user in made:
        user.close()
