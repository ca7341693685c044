"""The fan-out: this process's streams by user, whatever backend carries the events to it.

A backend (``hub.Hub`` for one Redis, ``shards.ShardedHub`` for a cluster, ``memory.MemoryHub``
for tests) owns the connection and the channel subscriptions; it hands every message it reads
to ``Fanout.dispatch``, which parses it once, acts on control messages (``session_ended``
closes one login's streams or all of a user's; ``session_looking`` marks one login's streams
as looking or not, for presence.py) and offers the event to each of that user's
``Subscription``s. The fan-out keeps the reference counts that tell the backend when a user's
channel must be subscribed (their first stream) and unsubscribed (their last).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from flask_tidings import telemetry
from flask_tidings.events import Event, user_id_from_channel, user_key
from flask_tidings.kinds import SESSION_ENDED, SESSION_LOOKING, session_tag

log = logging.getLogger(__name__)


class PubSub(Protocol):
    """What the streams ask of a backend (``Hub``, ``ShardedHub``, ``MemoryHub``)."""

    connected: Any  # an Event-like: set while the backend can deliver (``wait(timeout)``)

    def subscribe(self, user_id: Any, session: str | None = None) -> Subscription:
        """Register a stream for ``user_id``; returns once its channel is confirmed (or given up on)."""

    def unsubscribe(self, sub: Subscription) -> None:
        """Release a stream; the channel goes with the user's last one."""

    def start(self) -> None:
        """Start listening (idempotent)."""

    def stop(self) -> None:
        """Stop listening, without closing streams."""

    def shutdown(self) -> None:
        """Close every stream now (the worker stops)."""

    def users(self) -> list[str]:
        """The users with a stream here."""

    def stats(self) -> dict[str, Any]:
        """Counts for operators and tests."""


class Subscription:
    """One stream as the hub sees it: whose it is, and where its events go.

    While the stream is being opened (the store is read, the replay written) events wait
    in a mailbox that keeps the latest per key; once a ``sink`` is attached they go
    straight to it. A sink has ``send_event(event)``, ``reread()``, ``looking_changed()`` and
    ``close()``.
    """

    MAX_PENDING = 64

    __slots__ = ("user_id", "login", "session_tag", "needs_reread", "closed", "looking", "_mailbox", "_sink")

    def __init__(self, user_id: Any, session: str | None) -> None:
        self.user_id = user_key(user_id)  # the app's id as a string: any type of id works
        self.login = session  # the login token, for a worker this stream is carried to
        self.session_tag = session_tag(session) if session else None
        self.needs_reread = False
        self.closed = False
        self.looking = False  # a tab of this stream's browser is visible (presence.py)
        self._mailbox: dict[str, Event] = {}
        self._sink: Any = None

    def offer(self, event: Event) -> None:
        """Deliver ``event`` or queue it, replacing a pending one with the same key; never blocks."""
        if self._sink is not None:
            self._sink.send_event(event)
            return
        key = event.key if event.id is not None else "ephemeral:" + event.name
        self._mailbox.pop(key, None)
        self._mailbox[key] = event
        if len(self._mailbox) > self.MAX_PENDING:
            # Too far behind: forget the backlog, the store holds what matters.
            self._mailbox.clear()
            self.needs_reread = True

    def request_reread(self) -> None:
        """Ask the stream to re-read the store (after a reconnect)."""
        if self._sink is not None:
            self._sink.reread()
        else:
            self.needs_reread = True

    def set_looking(self, looking: bool) -> None:
        """Whether a tab of this stream is visible; its sink learns of a change."""
        if looking != self.looking:
            self.looking = looking
            if self._sink is not None:
                self._sink.looking_changed()

    def close(self) -> None:
        """End the stream (now, or as soon as it is attached)."""
        self.closed = True
        if self._sink is not None:
            self._sink.close()

    def take_pending(self) -> list[Event]:
        """Take everything pending, oldest first."""
        events = list(self._mailbox.values())
        self._mailbox.clear()
        return events

    def attach(self, sink: Any) -> list[Event]:
        """Send future events to ``sink``; returns those that waited meanwhile."""
        events = self.take_pending()
        self._sink = sink
        return events

    @property
    def pending(self) -> int:
        """How many events wait in the mailbox."""
        return len(self._mailbox)


class Fanout:
    """Subscriptions by user, and the delivery of one channel message to them."""

    def __init__(self, key_of: Callable[[str, Any], str] | None = None) -> None:
        self.key_of = key_of  # the kinds' store-key rule, for events read off a channel
        self._subs: dict[str, set[Subscription]] = {}

    def add(self, sub: Subscription) -> bool:
        """Add a stream; True when it is its user's first here (subscribe the channel)."""
        subs = self._subs.get(sub.user_id)
        if subs:
            subs.add(sub)
            return False
        self._subs[sub.user_id] = {sub}
        return True

    def remove(self, sub: Subscription) -> bool:
        """Remove a stream; True when it was its user's last here (unsubscribe the channel)."""
        subs = self._subs.get(sub.user_id)
        if subs is None or sub not in subs:
            return False
        subs.discard(sub)
        if subs:
            return False
        del self._subs[sub.user_id]
        return True

    def take(self, user_id: Any) -> set[Subscription]:
        """Remove and return every stream of ``user_id`` (they move to another backend)."""
        return self._subs.pop(user_key(user_id), set())

    def put(self, user_id: Any, subs: Iterable[Subscription]) -> bool:
        """Add streams of ``user_id``; True when the user had none here (subscribe the channel)."""
        user_id = user_key(user_id)
        first = user_id not in self._subs
        self._subs.setdefault(user_id, set()).update(subs)
        return first

    def __contains__(self, user_id: object) -> bool:
        return user_key(user_id) in self._subs

    def users(self) -> list[str]:
        """The users with a stream here."""
        return list(self._subs)

    def streams_of(self, user_id: Any) -> list[Subscription]:
        """The streams of ``user_id`` here."""
        return list(self._subs.get(user_key(user_id), ()))

    def request_reread(self, user_id: Any) -> None:
        """Have every stream of ``user_id`` re-read the store (its channel was re-subscribed)."""
        for sub in self.streams_of(user_id):
            sub.request_reread()

    def close_session(self, user_id: Any, tag: str) -> int:
        """Close the streams of one login (``session_tag``); returns how many."""
        closed = [sub for sub in self.streams_of(user_id) if sub.session_tag == tag]
        for sub in closed:
            sub.close()
        return len(closed)

    def close_user(self, user_id: Any) -> int:
        """Close every stream of ``user_id``; returns how many."""
        subs = self.streams_of(user_id)
        for sub in subs:
            sub.close()
        return len(subs)

    def close_all(self) -> int:
        """Close every stream (the worker stops); returns how many were open."""
        count = 0
        for subs in list(self._subs.values()):
            for sub in list(subs):
                count += not sub.closed  # those carried to another worker are closed here already
                sub.close()
        return count

    def stats(self) -> dict[str, int]:
        """How many users and streams."""
        return {"users": len(self._subs), "streams": sum(len(s) for s in self._subs.values())}

    def dispatch(self, channel: str, raw: bytes | str) -> None:
        """Parse one channel message once and offer it to the channel's local streams."""
        user_id = user_id_from_channel(channel)
        subs = self._subs.get(user_id) if user_id is not None else None
        if not subs:
            return
        try:
            event = Event.from_json(raw, self.key_of)
        except ValueError as exc:
            log.warning("dropped a message on %s: %s: %.200r", channel, exc, raw)
            return
        if event.name == SESSION_ENDED:
            data = event.data if isinstance(event.data, dict) else {}
            if data.get("all") is True:
                self.close_user(user_id)
            elif isinstance(data.get("session"), str):
                self.close_session(user_id, data["session"])
            return
        if event.name == SESSION_LOOKING:
            data = event.data if isinstance(event.data, dict) else {}
            if isinstance(data.get("session"), str) and isinstance(data.get("looking"), bool):
                for sub in self.streams_of(user_id):
                    if sub.session_tag == data["session"]:
                        sub.set_looking(data["looking"])
            return
        telemetry.DELIVERIES.inc(len(subs))
        for sub in list(subs):
            sub.offer(event)
