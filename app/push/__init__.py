"""Web Push: devices opt in on their profile page, and a pushable notification that stays unread
and unseen for ``PUSH_DELAY_SECONDS`` is pushed to them by the background worker (docs/push.md).

- ``keys``: the site's VAPID key pair and ``sub``.
- ``subscriptions``: what a browser may subscribe (push services on ``PUSH_ALLOWED_ORIGINS``,
  well-formed keys), stored per login.
- ``routes``: ``/sw.js``, ``POST`` / ``DELETE /push/subscriptions``, a device's removal.
- ``sending``: the rule (queued after commit, decided when due), the texts, the delivery.
"""

from flask import Blueprint, Flask

bp = Blueprint("push", __name__)


def init_app(app: Flask) -> None:
    """Load (or make) the VAPID key, register the routes and the rule."""
    from app.push import keys, routes, sending  # noqa: F401 - routes registers its views

    keys.init_app(app)
    app.register_blueprint(bp)
