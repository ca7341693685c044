"""Real-time notifications: the store, the per-process hub, ``/stream`` and ``/notifications``.

One event's path: ``notify()`` (store.py) stores and commits → publishes to
``notifications:<user_id>`` → this worker's ``Hub`` (hub.py) offers it to each of the
user's open streams → each ``LiveStream`` (live.py; opened by ``stream()`` in routes.py)
sends the SSE frame on its socket → the browser's EventSource (static/js/tidings.js) →
the badge.
"""

from flask import Blueprint

bp = Blueprint("notifications", __name__)

# What other blueprints may call: logging out ends that login's streams everywhere.
from app.notifications import routes  # noqa: E402,F401  (routes register on bp)
from app.notifications.store import end_login_streams  # noqa: E402,F401
