"""Who is here: a user is *connected* while any stream of theirs is open on any worker or host,
and *looking* while one of their tabs is visible.

Each worker keeps both for all its users in two sorted sets, member the user id, score the last
time a worker vouched for them (Unix seconds):

- ``tidings:presence:connected``: every user with an open stream on some worker;
- ``tidings:presence:looking``: every user one of whose streams reports a visible tab.

Every ``interval`` seconds a worker writes its users with one ``ZADD … GT`` per set (in chunks of
``CHUNK`` members), in one round trip: the cost grows with workers and users, not with streams,
tabs or events. A user counts while their score is younger than ``ttl`` (2.5 intervals), so a
worker or host that dies (kill -9, a lost network) leaves no ghost for longer than that. Both
keys are single keys: every command names one, so they work on a Redis Cluster as they are.

A tab that becomes visible is written at once (``mark_looking``); one that stops being visible
takes its user out of ``looking`` at once and notes when (``tidings:presence:hidden``): any
other worker on which that user still has a visible tab puts them back at its next write
(within ``interval``), so "not looking, but a tab hid less than an interval ago" means "not
sure yet" (``UserPresence.settled``). The last time a user was connected is kept for
``retention`` seconds (``last_seen``).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from typing import Any, NamedTuple

CONNECTED = "tidings:presence:connected"
LOOKING = "tidings:presence:looking"
HIDDEN = "tidings:presence:hidden"
CHUNK = 1000
TTL_INTERVALS = 2.5


class UserPresence(NamedTuple):
    """One user's presence: connected and looking now, when last connected (Unix seconds), and
    whether "not looking" is settled: no tab of theirs hid within ``Presence.settle`` seconds
    (another device's tab may still be looking; its worker says so within an interval)."""

    online: bool
    looking: bool
    last_seen: float | None
    settled: bool = True


class Presence:
    """Presence in Redis (a ``Redis`` or a ``RedisCluster`` client)."""

    def __init__(self, client: Any, interval: float, retention: float = 30 * 86400) -> None:
        self.client = client
        self.interval = interval
        self.ttl = interval * TTL_INTERVALS
        # How long after a tab hid another worker may still be about to say its user looks: its
        # next write comes within an interval plus the write itself; a second of slack more.
        self.settle = interval * 1.5 + 1
        self.retention = retention

    # -- writing (a worker) ------------------------------------------------------------

    def refresh(self, connected: Collection[str], looking: Collection[str], now: float | None = None) -> int:
        """Vouch for this worker's users; returns how many commands that took."""
        now = time.time() if now is None else now
        pipe = self.client.pipeline(transaction=False)
        commands = 0
        for key, users in ((CONNECTED, connected), (LOOKING, looking)):
            for chunk in _chunks(users, CHUNK):
                pipe.zadd(key, dict.fromkeys(chunk, now), gt=True)
                commands += 1
        # Forget who stopped looking long ago, and last-seen times past their retention.
        pipe.zremrangebyscore(LOOKING, "-inf", now - self.ttl)
        pipe.zremrangebyscore(HIDDEN, "-inf", now - self.ttl)
        pipe.zremrangebyscore(CONNECTED, "-inf", now - self.retention)
        pipe.execute()
        return commands + 3

    def mark_looking(self, user_id: str, looking: bool, now: float | None = None) -> None:
        """Write one user's change at once: looking since now, or no longer looking (since now)."""
        now = time.time() if now is None else now
        pipe = self.client.pipeline(transaction=False)
        if looking:
            pipe.zadd(LOOKING, {user_id: now}, gt=True)
            pipe.zadd(CONNECTED, {user_id: now}, gt=True)
        else:
            pipe.zrem(LOOKING, user_id)
            pipe.zadd(HIDDEN, {user_id: now})
        pipe.execute()

    # -- reading (any process) ---------------------------------------------------------

    def of(self, user_ids: Iterable[str], now: float | None = None) -> dict[str, UserPresence]:
        """The presence of each of ``user_ids`` (three commands, however many users)."""
        ids = list(dict.fromkeys(user_ids))
        if not ids:
            return {}
        now = time.time() if now is None else now
        pipe = self.client.pipeline(transaction=False)
        pipe.zmscore(CONNECTED, ids)
        pipe.zmscore(LOOKING, ids)
        pipe.zmscore(HIDDEN, ids)
        connected, looking, hidden = pipe.execute()
        return {
            user_id: self._state(now, seen, look, hid)
            for user_id, seen, look, hid in zip(ids, connected, looking, hidden, strict=True)
        }

    def _state(self, now: float, seen: float | None, look: float | None, hid: float | None) -> UserPresence:
        fresh = now - self.ttl
        online = seen is not None and seen > fresh
        looking = online and look is not None and look > fresh
        settled = looking or not online or hid is None or hid <= now - self.settle
        return UserPresence(online, looking, seen, settled)

    def counts(self, now: float | None = None) -> tuple[int, int]:
        """How many users are connected, and how many looking, now."""
        now = time.time() if now is None else now
        pipe = self.client.pipeline(transaction=False)
        pipe.zcount(CONNECTED, f"({now - self.ttl}", "+inf")
        pipe.zcount(LOOKING, f"({now - self.ttl}", "+inf")
        connected, looking = pipe.execute()
        return int(connected), int(looking)


class MemoryPresence(Presence):
    """The same rules in this process's memory (the ``memory://`` backend of tests)."""

    _named: dict[str, MemoryPresence] = {}

    def __init__(self, interval: float, retention: float = 30 * 86400) -> None:
        super().__init__(None, interval, retention)
        self._sets: dict[str, dict[int, float]] = {CONNECTED: {}, LOOKING: {}, HIDDEN: {}}

    @classmethod
    def named(cls, url: str, interval: float) -> MemoryPresence:
        """The presence of the in-memory broker called ``url`` (one per URL, as the broker)."""
        if url not in cls._named:
            cls._named[url] = cls(interval)
        return cls._named[url]

    def _raise(self, key: str, users: Iterable[str], now: float) -> None:
        scores = self._sets[key]
        for user_id in users:
            scores[user_id] = max(scores.get(user_id, now), now)

    def refresh(self, connected: Collection[str], looking: Collection[str], now: float | None = None) -> int:
        now = time.time() if now is None else now
        self._raise(CONNECTED, connected, now)
        self._raise(LOOKING, looking, now)
        return 0

    def mark_looking(self, user_id: str, looking: bool, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if looking:
            self._raise(LOOKING, [user_id], now)
            self._raise(CONNECTED, [user_id], now)
        else:
            self._sets[LOOKING].pop(user_id, None)
            self._sets[HIDDEN][user_id] = now

    def of(self, user_ids: Iterable[str], now: float | None = None) -> dict[str, UserPresence]:
        now = time.time() if now is None else now
        sets = self._sets
        return {
            user_id: self._state(
                now, sets[CONNECTED].get(user_id), sets[LOOKING].get(user_id), sets[HIDDEN].get(user_id)
            )
            for user_id in dict.fromkeys(user_ids)
        }

    def counts(self, now: float | None = None) -> tuple[int, int]:
        now = time.time() if now is None else now
        fresh = now - self.ttl
        return tuple(sum(1 for s in self._sets[k].values() if s > fresh) for k in (CONNECTED, LOOKING))


def _chunks(items: Collection[str], size: int) -> Iterable[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
