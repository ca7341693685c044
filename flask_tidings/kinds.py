"""Notification kinds: a name, what a new one replaces in the store, and how the page shows it.

An app declares its kinds once (``Tidings(kinds=[Kind(...), ...])`` or ``tidings.kind(...)``).
``notify()`` refuses any other name, and the page listens for every declared one: the
template helper gives the page each kind's name and its ``per`` field, so the browser keeps
notifications apart by the same rule as the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

# A control message on a user's channel that closes one login's streams (or all of them):
# never stored, never forwarded. Its data is {"session": session_tag(login)} or {"all": true}.
SESSION_ENDED = "session_ended"
# A control message saying whether one login's tab is looking (presence.py): never stored, never
# forwarded. Its data is {"session": session_tag(login), "looking": bool}.
SESSION_LOOKING = "session_looking"
RESERVED = (SESSION_ENDED, SESSION_LOOKING)
# The longest ``per`` value kept as it is in a key (longer ones: their digest).
KEY_VALUE_CHARS = 100


@dataclass(frozen=True, slots=True)
class Kind:
    """One notification kind.

    ``per`` names the data field that tells several notifications of this kind apart (each
    kept in the store, e.g. one progress per task), or None: a new one replaces the last.
    ``keep``: with ``per``, how many of this kind a user's store keeps at most, the newest (so
    a sender of many distinct values cannot grow a user's store, and with it every replay).
    ``shown_as`` says, for the reader of the code, what the page does with it. ``push``: it may
    reach a person with no tab looking (``Tidings.on_pushable``, docs/push.md).
    """

    name: str
    shown_as: str = ""
    per: str | None = None
    push: bool = False
    keep: int = 100

    def key(self, data: Any) -> str:
        """What a notification of this kind replaces in the user's store. A ``per`` value that
        is long or not printable text (any sender's data) is kept apart by its digest, so the
        key always fits the store's column."""
        if self.per and isinstance(data, dict) and data.get(self.per):
            value = str(data[self.per])
            if len(value) > KEY_VALUE_CHARS or not value.isprintable():
                value = "#" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
            return f"{self.name}:{value}"
        return self.name


class NotificationRefused(ValueError):
    """A notification that must not be stored: an undeclared or reserved kind, or data that
    cannot be sent on (non-finite numbers, absurd nesting, too big)."""


def session_tag(login: str) -> str:
    """A short digest naming one login on the channel, without publishing the login itself."""
    return hashlib.sha256(login.encode()).hexdigest()[:16]


class Kinds:
    """The kinds one app declared, by name."""

    def __init__(self, kinds: Iterable[Kind] = ()) -> None:
        self._by_name: dict[str, Kind] = {}
        for kind in kinds:
            self.add(kind)

    def add(self, kind: Kind) -> Kind:
        """Declare ``kind``; ValueError for the reserved name or a name that could not be an SSE event."""
        if kind.name in RESERVED:
            raise ValueError(f"{kind.name!r} is reserved")
        if not kind.name or not kind.name.isprintable() or " " in kind.name:
            raise ValueError(f"{kind.name!r} cannot name an event (one printable word)")
        self._by_name[kind.name] = kind
        return kind

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __getitem__(self, name: str) -> Kind:
        return self._by_name[name]

    def declared(self, name: str) -> Kind:
        """The kind called ``name``; NotificationRefused (saying what is allowed) otherwise."""
        if name in RESERVED:
            raise NotificationRefused(
                f"{name!r} is reserved: it steers a login's streams and is never stored"
            )
        try:
            return self._by_name[name]
        except KeyError:
            raise NotificationRefused(
                f"{name!r} is not a declared notification kind (declared: {', '.join(self._by_name)})"
            ) from None

    def get(self, name: str) -> Kind | None:
        """The kind called ``name``, or None."""
        return self._by_name.get(name)

    def key_of(self, name: str, data: Any) -> str:
        """The store key of a notification, declared or not (operators may publish other names)."""
        kind = self._by_name.get(name)
        return kind.key(data) if kind else name

    def for_page(self) -> dict[str, str | None]:
        """Each kind's name and ``per`` field: what the page script needs to key them alike."""
        return {name: kind.per for name, kind in self._by_name.items()}
