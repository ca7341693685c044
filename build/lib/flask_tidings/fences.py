"""Every use of a library's private API in Flask-Tidings, fenced in this one module.

Each is here because no public door does the job (docs/design.md, "Private APIs"), and each is
guarded by a test in ``tests/unit/test_private_apis.py`` that fails loudly when the library
changes under it; ``pyproject.toml`` pins the ranges those tests cover. The gunicorn worker's
copy of ``GeventWorker.run`` lives with the worker (gunicorn.py) and is guarded the same way.
"""

from __future__ import annotations

import _socket  # CPython's socket type, never gevent's wrapper: the streams write without waiting
import socket
from typing import Any

from redis.cluster import RedisCluster


def raw_socket(fd: int) -> _socket.socket:
    """A plain (not gevent-wrapped) socket object for ``fd``: its ``send`` never yields, so a
    stream's write is a syscall and nothing more (``socket.socket`` is gevent's once patched)."""
    return _socket.socket(fileno=fd)


def redis_socket(conn: Any) -> socket.socket:
    """The OS socket under a connected redis-py ``Connection``, for the event loop to watch.

    redis-py keeps it in ``Connection._sock``; under gevent that is gevent's socket, whose
    own ``_sock`` is the real one the loop can read without a greenlet switch.
    """
    sock = conn._sock
    return getattr(sock, "_sock", sock)


def node_of_slot(cluster: RedisCluster, slot: int) -> str:
    """``host:port`` of the master that owns ``slot`` in redis-py's slot map (``nodes_manager``,
    not part of redis-py's documented API)."""
    return cluster.nodes_manager.get_node_from_slot(slot).name


def refresh_slot_map(cluster: RedisCluster) -> None:
    """Ask the cluster for its slot map again (after MOVED, a failover or a migration)."""
    cluster.nodes_manager.initialize()
