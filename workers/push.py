"""The push jobs (app/push/sending.py) as RQ runs them: in this process's app."""

from __future__ import annotations

from workers.jobs import get_app


def push_notification(user_id: int, notification_id: int, deferred: bool = False) -> str:
    """A pushable notification is due: push it if it is still unread and unseen."""
    from app.push import sending

    with get_app().app_context():
        return sending.push_notification(user_id, notification_id, deferred)


def retry_push(subscription_id: int, endpoint: str, notification_id: int, topic: str, attempt: int) -> str:
    """Another attempt at one device's push."""
    from app.push import sending

    with get_app().app_context():
        return sending.retry_push(subscription_id, endpoint, notification_id, topic, attempt)
