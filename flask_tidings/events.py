"""The notification value object, its wire formats and the Redis channel names."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CHANNEL_PREFIX = "notifications:"
CHANNEL_PATTERN = CHANNEL_PREFIX + "*"
# A notification is a badge count or a toast: anything bigger on a channel is refused.
MAX_MESSAGE_BYTES = 64 * 1024


def user_key(user_id: Any) -> str:
    """How the engine names a user everywhere outside the store: ``str`` of the app's own id
    (an integer, a string or a UUID), as it appears in the channel name."""
    return user_id if isinstance(user_id, str) else str(user_id)


def channel_for(user_id: Any) -> str:
    """The Redis channel carrying ``user_id``'s notifications."""
    return f"{CHANNEL_PREFIX}{user_key(user_id)}"


def user_id_from_channel(channel: str) -> str | None:
    """The user key (``user_key``) a channel belongs to, or None for a foreign channel."""
    if not channel.startswith(CHANNEL_PREFIX):
        return None
    return channel[len(CHANNEL_PREFIX) :] or None


@dataclass(frozen=True, slots=True)
class Event:
    """One notification as it travels: JSON on Redis and in /notifications, SSE on /stream.

    ``id`` is None for ephemeral events an operator publishes straight to a channel. ``key``
    is what it replaces in the store (``Kind.key``); the name when not given.
    """

    name: str
    data: Any
    timestamp: float
    id: int | None = None
    key: str = field(default="", repr=False, compare=False)
    # The SSE frame, built once however many streams an event fans out to.
    _wire: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.name)

    def to_dict(self) -> dict[str, Any]:
        """The contract's Notification object."""
        return {"id": self.id, "name": self.name, "data": self.data, "timestamp": self.timestamp}

    def to_json(self) -> str:
        """Compact JSON, as published and as the SSE ``data:`` line."""
        body = self.to_dict()
        if self.id is None:
            del body["id"]
        return json.dumps(body, allow_nan=False)

    @property
    def wire(self) -> bytes:
        """The Server-Sent Events frame as UTF-8 bytes, built on first use and then shared."""
        if self._wire is None:
            head = f"id: {self.id}\n" if self.id is not None else ""
            # to_json never emits a raw newline (json escapes them), so one data: line is exact.
            frame = f"{head}event: {self.name}\ndata: {self.to_json()}\n\n"
            object.__setattr__(self, "_wire", frame.encode())
        return self._wire

    def __str__(self) -> str:
        """The Server-Sent Events frame."""
        return self.wire.decode()

    @classmethod
    def from_json(cls, raw: str | bytes, key_of: Callable[[str, Any], str] | None = None) -> Event:
        """Parse a channel message; ValueError unless it is a JSON object with a string name
        that can be sent on as it came (finite numbers, sane nesting, at most 64 KB).
        ``key_of(name, data)`` gives its store key (the kinds' rule)."""
        if len(raw) > MAX_MESSAGE_BYTES:
            raise ValueError(f"{len(raw)} bytes, more than {MAX_MESSAGE_BYTES}")
        try:
            body = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
        except RecursionError:
            raise ValueError("nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        name = body.get("name")
        if not isinstance(name, str) or not name or len(name) > 128 or not _is_token(name):
            raise ValueError("no usable 'name'")
        event_id = body.get("id")
        if event_id is not None and (
            isinstance(event_id, bool) or not isinstance(event_id, int) or not 0 < event_id < 2**63
        ):
            raise ValueError("'id' must be a positive 64-bit integer")
        timestamp = body.get("timestamp")
        if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
            timestamp = None
        elif not math.isfinite(timestamp):
            timestamp = None
        data = body.get("data")
        event = cls(
            name=name,
            data=data,
            timestamp=float(timestamp) if timestamp is not None else _now(),
            id=event_id,
            key=key_of(name, data) if key_of else name,
        )
        try:
            event.wire  # noqa: B018 - encoded once here, so a message that cannot be sent is refused
        except (ValueError, RecursionError, OverflowError) as exc:
            raise ValueError(f"cannot be encoded again: {exc.__class__.__name__}") from None
        return event


def _is_token(name: str) -> bool:
    # An SSE event name ends at a newline; keep names to one printable line.
    return name.isprintable() and "\n" not in name and "\r" not in name


def _now() -> float:
    return time.time()


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise ValueError(f"{token[:20]} is out of range")
    return value
