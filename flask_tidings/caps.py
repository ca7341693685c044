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
from typing import Any

import gevent
import gevent.event
import redis

from flask_tidings.tally import FailureTally

log = logging.getLogger(__name__)

KEY = "tidings:streams:{user_id}"

# KEYS[1]: the user's leases; ARGV: now, the new lease, when it expires, the cap, the key's TTL.
# Returns 1 with the lease added, 0 when the user already holds the cap.
_TAKE_LEASE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
    return 0
end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
"""


class StreamCap:
    """At most ``limit`` open streams per user; ``limit`` 0 means no cap."""

    def __init__(self, client: redis.Redis, limit: int, lease_seconds: float = 60.0) -> None:
        self.client = client
        self.limit = limit
        self.lease_seconds = lease_seconds
        origin = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._names = (f"{origin}:{n}" for n in itertools.count())
        # One script call per connect, and the calls of connects that arrive together (a burst
        # after a crash) go in one pipeline: one round trip for all of them, on one pooled
        # connection, instead of each connect waiting its turn for one of the pool's few.
        self._take = client.register_script(_TAKE_LEASE)
        self._batched = not isinstance(client, redis.RedisCluster)  # keys in many slots: one by one
        self._queue: list[tuple[list, list, gevent.event.AsyncResult]] = []
        self._flushing = False
        # An outage must not write a line per connect and close (issue 14): summed per interval.
        self.failures = FailureTally(log, "reach Redis for the stream cap (streams open uncapped)")

    def acquire(self, user_id: Any) -> str | None:
        """A lease for one more stream of ``user_id``, or None when the user is at the cap.

        When Redis cannot be asked the stream is let through (with a warning): the cap
        protects other users' slots, and a stream without Redis is harmless.
        """
        lease = next(self._names)
        if not self.limit:
            return lease
        now = time.time()
        keys = [KEY.format(user_id=user_id)]
        args = [now, lease, now + self.lease_seconds, self.limit, int(self.lease_seconds) + 1]
        try:
            taken = self._call(keys, args)
        except redis.RedisError as exc:
            self.failures.failed(exc)
            return lease
        self.failures.succeeded()
        return lease if taken else None

    def _call(self, keys: list, args: list) -> int:
        if not self._batched:
            return self._take(keys=keys, args=args)
        done = gevent.event.AsyncResult()
        self._queue.append((keys, args, done))
        if not self._flushing:
            self._flushing = True
            gevent.spawn(self._flush)
        return done.get()

    def _flush(self) -> None:
        """Send what the connects queued, one pipeline at a time, until nothing waits."""
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    results = self._run(batch)
                except Exception as exc:  # noqa: BLE001 - every waiting connect gets it; none hangs
                    results = [exc] * len(batch)
                for (_, _, done), result in zip(batch, results, strict=True):
                    if isinstance(result, Exception):
                        done.set_exception(result)
                    else:
                        done.set(result)
        finally:
            self._flushing = False

    def _run(self, batch: list) -> list:
        for attempt in range(2):
            pipe = self.client.pipeline(transaction=False)
            for keys, args, _ in batch:
                pipe.evalsha(self._take.sha, len(keys), *keys, *args)
            results = pipe.execute(raise_on_error=False)
            if attempt or not any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
                return results
            self.client.script_load(_TAKE_LEASE)  # a restarted Redis forgot the script
        return results

    def release(self, user_id: Any, lease: str) -> None:
        """Give a closed stream's lease back."""
        if not self.limit:
            return
        try:
            self.client.zrem(KEY.format(user_id=user_id), lease)
        except redis.RedisError as exc:
            self.failures.failed(exc)  # the lease expires by itself

    def renew(self, leases: Iterable[tuple[str, str]], batch: int = 500) -> None:
        """Extend the leases of streams still open: two commands per user, ``batch`` users per
        round trip, yielding to the other greenlets between batches (50,000 streams must not
        hold the event loop for the time it takes to build every command at once)."""
        if not self.limit:
            return
        by_user: dict[str, dict[str, float]] = {}
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
