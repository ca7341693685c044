"""Real-time notifications: the store, the per-process hub, ``/stream`` and ``/notifications``.

One event's path: ``notify()`` (store.py) stores and commits → publishes to
``notifications:<user_id>`` → this worker's ``Hub`` (hub.py) offers it to each open
stream's mailbox → ``stream()`` (routes.py) writes the SSE frame → the browser's
EventSource (static/js/tidings.js) → the badge.
"""

from flask import Blueprint

bp = Blueprint("notifications", __name__)

from app.notifications import routes  # noqa: E402,F401  (routes register on bp)
