"""Presence on the site's pages: "Online now" or "Last seen …" on profiles and in the directory.

The engine knows who has a stream open on any worker or host (``tidings.presence_of``); the
database knows when each user last loaded a page (``User.last_seen``). A page shows the later
of the two, and never fails for want of Redis: then it knows only the database's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple

import redis

from app.models import User
from app.notifications import tidings

log = logging.getLogger(__name__)


class Shown(NamedTuple):
    """What a page says of one user: online now, or when last seen (UTC)."""

    online: bool
    last_seen: datetime | None


def shown(users: Iterable[User]) -> dict[int, Shown]:
    """Each user's presence as pages show it, by id (one Redis round trip for them all)."""
    users = list(users)
    try:
        live = tidings.presence_of(users)
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        log.warning("presence unavailable, showing last page loads only: %s", exc)
        live = {}
    result = {}
    for user in users:
        here = live.get(user.id)
        seen = user.last_seen
        if here is not None and here.last_seen is not None:
            streamed = datetime.fromtimestamp(here.last_seen, UTC)
            seen = streamed if seen is None or streamed > seen else seen
        result[user.id] = Shown(bool(here and here.online), seen)
    return result
