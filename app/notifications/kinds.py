"""Every notification kind, declared once: its name, what it replaces in the store, how a page shows it.

``store()`` and ``flask notify`` refuse a name declared nowhere here (and the reserved
control name); the page listens for every declared kind (``data-event-kinds`` on ``<body>``)
and re-dispatches each as ``tidings:<name>`` on ``document``. To add a kind, add a line
below, and, if the page should do more than re-dispatch it, a handler in ``tidings.js``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Kind:
    """One notification kind."""

    name: str
    shown_as: str
    # The data field that tells several notifications of this kind apart (each kept in the
    # store), or None: a new one replaces the previous.
    per: str | None = None

    def key(self, data: Any) -> str:
        """What a notification of this kind replaces in the user's store."""
        if self.per and isinstance(data, dict) and data.get(self.per):
            return f"{self.name}:{data[self.per]}"
        return self.name


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("unread_message_count", "the navbar badge and every count on the page (data: int)"),
        Kind("new_message", "a toast linking to the inbox (data: sender, preview)"),
        Kind("task_progress", "the task's progress bar; a download link at 100", per="task_id"),
        Kind("announcement", "a toast with the text (data: str)"),
        # No handler on the page: re-dispatched as tidings:build_finished for the site's own script.
        Kind("build_finished", "nothing by itself: an example of a site's own kind"),
    )
}

# A control message on the channel that closes one login's streams: never stored, never forwarded.
# Its data is {"session": session_tag(login_token)}.
SESSION_ENDED = "session_ended"


def session_tag(login_token: str) -> str:
    """A short digest naming one login on the channel, without publishing the token itself."""
    return hashlib.sha256(login_token.encode()).hexdigest()[:16]


class NotificationRefused(ValueError):
    """A notification that must not be stored: an undeclared or reserved kind, or data that
    cannot be sent on (non-finite numbers, absurd nesting, too big)."""


def declared(name: str) -> Kind:
    """The kind called ``name``; NotificationRefused (saying what is allowed) otherwise."""
    if name == SESSION_ENDED:
        raise NotificationRefused(f"{name!r} is reserved: it closes a login's streams and is never stored")
    try:
        return KINDS[name]
    except KeyError:
        raise NotificationRefused(
            f"{name!r} is not a declared notification kind (declared: {', '.join(KINDS)}; "
            "add one in app/notifications/kinds.py)"
        ) from None


def key_of(name: str, data: Any) -> str:
    """The store key of a notification, declared or not (operators may publish other names)."""
    kind = KINDS.get(name)
    return kind.key(data) if kind else name
