"""An in-memory pub/sub backend for fast tests: one process, no Redis.

``TIDINGS_REDIS_URL = "memory://<name>"``: ``notify()`` and ``publish()`` hand each message
straight to the fan-out of every hub of that name in this process, through the same parsing,
control messages and subscriptions as Redis' messages; ``/stream`` opens under gunicorn's
worker as with Redis, capped per user by ``MemoryCap``. One process: run one gunicorn worker.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from flask_tidings.events import user_key
from flask_tidings.fanout import Fanout, Subscription

_brokers: dict[str, MemoryBroker] = {}


class MemoryBroker:
    """The channels of one ``memory://`` name: every hub listening, in this process."""

    def __init__(self) -> None:
        self.hubs: list[MemoryHub] = []

    @classmethod
    def named(cls, url: str) -> MemoryBroker:
        """The broker of ``url`` (one per name per process)."""
        return _brokers.setdefault(url, cls())

    def publish(self, channel: str, message: str | bytes) -> int:
        """Deliver ``message`` to every hub; returns how many have a stream of that channel's user."""
        reached = 0
        for hub in list(self.hubs):
            reached += hub.receive(channel, message)
        return reached


class _Connected:
    """Always connected: an in-process broker cannot go away."""

    def is_set(self) -> bool:
        return True

    def wait(self, timeout: float | None = None) -> bool:
        return True


class MemoryHub:
    """The backend of one process's streams on a ``MemoryBroker`` (see ``fanout.PubSub``)."""

    def __init__(self, broker: MemoryBroker, key_of: Any = None) -> None:
        self.fanout = Fanout(key_of)
        self.connected = _Connected()
        self.broker = broker
        broker.hubs.append(self)

    def receive(self, channel: str, message: str | bytes) -> int:
        """One message from the broker, handed to the fan-out; 1 when a stream here may want it."""
        before = self.fanout.stats()["streams"]
        self.fanout.dispatch(channel, message)
        return int(before > 0)

    def subscribe(self, user_id: Any, session: str | None = None) -> Subscription:
        sub = Subscription(user_id, session)
        self.fanout.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self.fanout.remove(sub)

    def start(self) -> None:
        """Nothing to start."""

    def stop(self) -> None:
        """Stop receiving."""
        if self in self.broker.hubs:
            self.broker.hubs.remove(self)

    def shutdown(self) -> None:
        self.fanout.close_all()
        self.stop()

    def users(self) -> list[str]:
        return self.fanout.users()

    def stats(self) -> dict[str, Any]:
        return {**self.fanout.stats(), "connected": True}


class MemoryCap:
    """The per-user stream cap (``caps.StreamCap``'s methods) over this process's streams."""

    lease_seconds = 60.0  # how often the streams renew: nothing to do, but the loop runs

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._leases: dict[str, set[str]] = {}
        self._names = (f"memory:{n}" for n in itertools.count())

    def acquire(self, user_id: Any) -> str | None:
        """A lease for one more stream of ``user_id``, or None when the user is at the cap."""
        lease = next(self._names)
        if not self.limit:
            return lease
        mine = self._leases.setdefault(user_key(user_id), set())
        if len(mine) >= self.limit:
            return None
        mine.add(lease)
        return lease

    def release(self, user_id: Any, lease: str) -> None:
        """Give a closed stream's lease back."""
        mine = self._leases.get(user_key(user_id))
        if mine is not None:
            mine.discard(lease)
            if not mine:
                del self._leases[user_key(user_id)]

    def renew(self, leases: Iterable[tuple[str, str]], batch: int = 500) -> None:
        """Nothing to renew: a lease lives as long as its stream in this process."""
