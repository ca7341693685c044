"""An in-memory pub/sub backend for fast tests: one process, no Redis.

``TIDINGS_REDIS_URL = "memory://<name>"``: ``notify()`` and ``publish()`` hand each message
straight to the fan-out of every hub of that name in this process, through the same parsing,
control messages and subscriptions as Redis' messages. Only the pub/sub path: the stream cap
and ``/stream`` itself need Redis and gunicorn's worker.
"""

from __future__ import annotations

from typing import Any

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
