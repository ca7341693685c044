"""What a response and the gunicorn worker agree on to pass a connection from one to the other.

The worker (gunicorn.py) puts a ``Handover`` in every request's environ under ``ENVIRON_KEY``;
``/stream``'s response takes the connection through it. Kept apart from the worker so that
storing a notification (a CLI command, an RQ job) never imports gunicorn.
"""

ENVIRON_KEY = "tidings.handover"


class HandoverRefused(RuntimeError):
    """The connection cannot be taken over (see ``Handover.refusal``)."""
