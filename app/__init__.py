"""Tidings: private messages with live notifications, as a Flask application factory.

Importing the package imports nothing else: gunicorn's master loads the worker class from
``flask_tidings.gunicorn`` before it forks, and Flask, SQLAlchemy and redis-py must first be imported in
the workers, after gevent has patched the standard library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app: configuration from the environment, overridden by ``test_config``."""
    from app.factory import create_app as build

    return build(test_config)
