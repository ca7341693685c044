"""Flask-Tidings: live notifications for Flask apps over Redis and Server-Sent Events.

The public API is what this module exports (and ``flask_tidings.gunicorn.StreamWorker`` for
gunicorn's ``worker_class``)::

    from flask_tidings import Tidings, Kind, SQLAlchemyStore, NotificationMixin

    tidings = Tidings(kinds=[Kind("unread_count")], store=SQLAlchemyStore(db, Notification))
    tidings.init_app(app)
    tidings.notify(user, "unread_count", 3)   # published once the transaction commits
    db.session.commit()

Names are imported on first use: gunicorn's master imports ``flask_tidings.gunicorn`` before
it forks, and Flask, SQLAlchemy and redis-py must first be imported in the workers, after
gevent has patched the standard library.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from flask_tidings.events import Event
    from flask_tidings.extension import Identity, Tidings, flask_login_identity
    from flask_tidings.hub import StreamingUnavailable
    from flask_tidings.kinds import Kind, NotificationRefused
    from flask_tidings.presence import UserPresence
    from flask_tidings.rawsql import RawSelect
    from flask_tidings.store import NotificationMixin, SQLAlchemyStore, Store
    from flask_tidings.tally import FailureTally

_EXPORTS = {
    "Tidings": "flask_tidings.extension",
    "Identity": "flask_tidings.extension",
    "flask_login_identity": "flask_tidings.extension",
    "Kind": "flask_tidings.kinds",
    "NotificationRefused": "flask_tidings.kinds",
    "UserPresence": "flask_tidings.presence",
    "Event": "flask_tidings.events",
    "Store": "flask_tidings.store",
    "SQLAlchemyStore": "flask_tidings.store",
    "NotificationMixin": "flask_tidings.store",
    "StreamingUnavailable": "flask_tidings.hub",
    "FailureTally": "flask_tidings.tally",
    "RawSelect": "flask_tidings.rawsql",
}

__all__ = [
    "Event",
    "FailureTally",
    "Identity",
    "Kind",
    "NotificationMixin",
    "NotificationRefused",
    "RawSelect",
    "SQLAlchemyStore",
    "Store",
    "StreamingUnavailable",
    "Tidings",
    "UserPresence",
    "flask_login_identity",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'flask_tidings' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
