"""The application factory: configuration, extensions, blueprints."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from flask_babel import lazy_gettext
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from werkzeug.routing import IntegerConverter

from app import i18n, service_kinds
from app.config import load_config
from app.extensions import bootstrap, csrf, db, login, migrate
from app.limits import limiter
from app.mail import mail


class RowId(IntegerConverter):
    """``<int:…>`` in the site's routes names a row: at most 2**31 - 1, PostgreSQL's integer. A
    larger number is a 404 like any unknown id, never an error from the database."""

    def __init__(self, url_map: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", 2**31 - 1)
        super().__init__(url_map, *args, **kwargs)


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: configuration from the environment, overridden by ``test_config``."""
    app = Flask(__name__, instance_relative_config=True)
    app.url_map.converters["int"] = RowId  # before any route is added
    app.config.from_mapping(load_config(app.instance_path))
    if test_config:
        app.config.from_mapping(test_config)
    _engine_options(app)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    db.init_app(app)
    migrate.init_app(app, db, render_as_batch=True)
    login.init_app(app)
    login.login_view = "auth.login"
    login.login_message_category = "info"
    csrf.init_app(app)
    limiter.init_app(app)
    bootstrap.init_app(app)
    mail.init_app(app)
    i18n.init_app(app)
    login.login_message = lazy_gettext("Please log in to access this page.")
    login.localize_callback = str  # the lazy text, in the request's language

    from app.models import Notification, User
    from app.notifications import tidings
    from flask_tidings import SQLAlchemyStore

    tidings.init_app(app, store=SQLAlchemyStore(db, Notification, lock_rows_of=User))
    # Its one POST (/presence) checks the page script's token itself (presence_decorators).
    csrf.exempt(tidings.blueprint)
    service_kinds.init_app(app, tidings)

    from app import api, auth, errors, main, messages, ops, push, security

    app.register_blueprint(errors.bp)
    app.register_blueprint(auth.bp)
    app.register_blueprint(main.bp)
    app.register_blueprint(messages.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(api.bp)
    push.init_app(app)
    security.init_app(app)

    from app import cli, metrics

    cli.init_app(app)
    metrics.init_app(app)
    _template_helpers(app)
    return app


def _engine_options(app: Flask) -> None:
    """Pool settings per database: streams hold no connection, requests hold one briefly."""
    uri = app.config["SQLALCHEMY_DATABASE_URI"]
    options: dict[str, Any] = {}
    if not uri.startswith("sqlite"):
        # A server restart must cost no request an error: test each connection as it leaves
        # the pool (SQLite is a file in this process; nothing to ping).
        options["pool_pre_ping"] = True
    if uri.startswith("postgresql"):
        options.update(pool_size=10, max_overflow=20, pool_timeout=10)
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", options)


@sa_event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    """WAL lets readers run beside a writer; foreign keys are enforced as on PostgreSQL."""
    module = type(dbapi_connection).__module__
    if module.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()


def _template_helpers(app: Flask) -> None:
    from flask_login import current_user

    from app.text import linkify, preview

    app.add_template_filter(linkify, "linkify")
    app.add_template_filter(preview, "preview")

    @app.context_processor
    def navbar_state() -> dict[str, Any]:
        """The badge count every logged-in page starts from; services' notifications."""
        if not current_user.is_authenticated:
            return {}
        return {
            "unread_count": current_user.unread_message_count(),
            "service_notifications": lambda: service_kinds.for_page(app, current_user.id),
        }
