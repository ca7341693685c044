"""The per-user stream cap, across every worker and host: leases in a Redis sorted set.

Each open stream holds a lease ``<host>:<pid>:<random>:<n>`` in ``tidings:streams:<user_id>``, scored
by when it expires. Opening a stream drops expired leases, adds its own and counts; over the
cap it takes its lease back and is refused. Workers renew their streams' leases every third
of the lease time and release them on close, so a worker that dies (kill -9, a lost host)
frees its users' slots within one lease time. Nothing like this exists in Flask-Limiter
(which counts requests per window, not connections held), hence this small module.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable

import gevent
import redis

log = logging.getLogger(__name__)

KEY = "tidings:streams:{user_id}"


class StreamCap:
    """At most ``limit`` open streams per user; ``limit`` 0 means no cap."""

    def __init__(self, client: redis.Redis, limit: int, lease_seconds: float = 60.0) -> None:
        self.client = client
        self.limit = limit
        self.lease_seconds = lease_seconds
        origin = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._names = (f"{origin}:{n}" for n in itertools.count())

    def acquire(self, user_id: int) -> str | None:
        """A lease for one more stream of ``user_id``, or None when the user is at the cap.

        When Redis cannot be asked the stream is let through (with a warning): the cap
        protects other users' slots, and a stream without Redis is harmless.
        """
        lease = next(self._names)
        if not self.limit:
            return lease
        key, now = KEY.format(user_id=user_id), time.time()
        try:
            pipe = self.client.pipeline(transaction=True)
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {lease: now + self.lease_seconds})
            pipe.zcard(key)
            pipe.expire(key, int(self.lease_seconds) + 1)
            held = pipe.execute()[2]
            if held > self.limit:
                self.client.zrem(key, lease)
                return None
        except redis.RedisError as exc:
            log.warning("could not count user %s's streams (%s); letting this one open", user_id, exc)
        return lease

    def release(self, user_id: int, lease: str) -> None:
        """Give a closed stream's lease back."""
        if not self.limit:
            return
        try:
            self.client.zrem(KEY.format(user_id=user_id), lease)
        except redis.RedisError as exc:
            log.warning("could not release user %s's stream lease (%s); it expires by itself", user_id, exc)

    def renew(self, leases: Iterable[tuple[int, str]], batch: int = 500) -> None:
        """Extend the leases of streams still open: two commands per user, ``batch`` users per
        round trip, yielding to the other greenlets between batches (50,000 streams must not
        hold the event loop for the time it takes to build every command at once)."""
        if not self.limit:
            return
        by_user: dict[int, dict[str, float]] = {}
        expires = time.time() + self.lease_seconds
        for user_id, lease in leases:
            by_user.setdefault(user_id, {})[lease] = expires
        users = list(by_user.items())
        for start in range(0, len(users), batch):
            pipe = self.client.pipeline(transaction=False)
            for user_id, mine in users[start : start + batch]:
                key = KEY.format(user_id=user_id)
                pipe.zadd(key, mine, xx=True)
                pipe.expire(key, int(self.lease_seconds) + 1)
            try:
                pipe.execute()
            except redis.RedisError as exc:
                log.warning("could not renew stream leases (%s)", exc)
                return
            gevent.sleep(0)
