"""The hub on a Redis Cluster (``REDIS_CLUSTER=1``): sharded pub/sub, one connection per master.

A plain PUBLISH on a cluster is copied to every node, so nodes add no pub/sub capacity.
Sharded pub/sub (Redis 7: ``SPUBLISH``/``SSUBSCRIBE``) keeps a channel's messages on the shard
that owns its slot. This worker therefore holds one ``Hub`` per master that owns one of its
users' channels (hub.py, in its sharded mode: same reference counting, confirmation before
the store read, and a listener that never dies), and sends each user's ``SSUBSCRIBE`` to the
hub of the channel's owner.

The slot map is redis-py's (``RedisCluster.nodes_manager``, through fences.py). When a channel
leaves a node (the server's own ``sunsubscribe`` after a slot migration, ``MOVED`` for a
subscribe, a node that cannot be reached after a failover), the map is refreshed and every user
of that node whose channel now lives elsewhere moves to that node's hub; their streams re-read
the store once the new subscription is confirmed, so nothing published meanwhile is lost.

Why a listener per node rather than redis-py's ``ClusterPubSub.get_sharded_message``: that one
polls the nodes' connections in turn, so a quiet node's poll timeout sits in front of a busy
node's messages; here the event loop reads each node's socket as soon as it is readable.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent
import redis
from redis.cluster import RedisCluster

from flask_tidings.events import channel_for, user_id_from_channel, user_key
from flask_tidings.fanout import Subscription
from flask_tidings.fences import node_of_slot, refresh_slot_map
from flask_tidings.hub import Hub

log = logging.getLogger(__name__)


class AllConnected:
    """``connected`` for a set of hubs: set when each of them holds its connection."""

    def __init__(self, hubs: Callable[[], list[Hub]]) -> None:
        self._hubs = hubs

    def is_set(self) -> bool:
        return all(h.connected.is_set() for h in self._hubs())

    def wait(self, timeout: float | None = None) -> bool:
        with gevent.Timeout(timeout, False):
            for hub in self._hubs():
                hub.connected.wait()
        return self.is_set()


class ShardedHub:
    """This worker's subscriptions spread over one hub per cluster master."""

    def __init__(self, cluster: RedisCluster, make_hub: Callable[..., Hub]) -> None:
        self.cluster = cluster
        self._make_hub = make_hub  # make_hub(host, port, on_moved, on_lost) -> Hub
        self._hubs: dict[str, Hub] = {}
        self._home: dict[int, str] = {}  # user id -> the node whose hub holds their channel
        self._rerouting = False
        self.connected = AllConnected(lambda: list(self._hubs.values()))
        self.sharded = True

    @classmethod
    def for_url(cls, url: str, **hub_options: Any) -> ShardedHub:
        """Hubs for the cluster whose seed node is at ``url`` (``hub_options``: ``Hub.for_url``'s)."""
        cluster = RedisCluster.from_url(url, socket_connect_timeout=2, socket_timeout=5)

        def make_hub(host: str, port: int, on_moved, on_lost) -> Hub:
            return Hub.for_url(
                url, host=host, port=port, sharded=True, on_moved=on_moved, on_lost=on_lost, **hub_options
            )

        return cls(cluster, make_hub)

    # -- where channels live ---------------------------------------------------------

    def owner(self, user_id: Any) -> str:
        """The name (``host:port``) of the master serving ``user_id``'s channel."""
        slot = self.cluster.keyslot(channel_for(user_id))
        return node_of_slot(self.cluster, slot)

    def _hub(self, node: str) -> Hub:
        hub = self._hubs.get(node)
        if hub is None:
            host, port = node.rsplit(":", 1)
            hub = self._hubs[node] = self._make_hub(
                host, int(port), lambda channels: self._moved(node, channels), lambda: self._lost(node)
            )
        return hub

    # -- what streams ask of a hub ----------------------------------------------------

    def subscribe(self, user_id: Any, session: str | None = None) -> Subscription:
        user_id = user_key(user_id)
        node = self._home.get(user_id) or self.owner(user_id)
        self._home[user_id] = node
        return self._hub(node).subscribe(user_id, session)

    def unsubscribe(self, sub: Subscription) -> None:
        node = self._home.get(sub.user_id)
        hub = self._hubs.get(node) if node else None
        if hub is None:
            return
        hub.unsubscribe(sub)
        if sub.user_id not in hub.users():
            self._home.pop(sub.user_id, None)

    def users(self) -> list[str]:
        """The users with a stream here, on any node."""
        return list(self._home)

    def start(self) -> None:
        """Nothing to start before a user subscribes (each node's hub starts with its first)."""

    def stop(self) -> None:
        for hub in self._hubs.values():
            hub.stop()

    def shutdown(self) -> None:
        for hub in self._hubs.values():
            hub.shutdown()

    def stats(self) -> dict[str, Any]:
        per_node = {node: hub.stats() for node, hub in self._hubs.items()}
        return {
            "users": sum(s["users"] for s in per_node.values()),
            "streams": sum(s["streams"] for s in per_node.values()),
            "connected": self.connected.is_set(),
            "nodes": per_node,
        }

    # -- following the topology --------------------------------------------------------

    def _moved(self, node: str, channels: list[str]) -> None:
        users = [u for u in map(user_id_from_channel, channels) if u is not None]
        gevent.spawn(self._reroute, node, users, True)

    def _lost(self, node: str) -> None:
        hub = self._hubs.get(node)
        if hub is not None and not self._rerouting:
            gevent.spawn(self._reroute, node, hub.users(), False)

    def _reroute(self, node: str, users: list[str], node_alive: bool) -> None:
        """Refresh the slot map and move the given users of ``node`` to where they live now."""
        self._rerouting = True
        try:
            try:
                refresh_slot_map(self.cluster)
            except (redis.RedisError, OSError) as exc:
                log.warning("could not refresh the cluster's slot map (%s); retrying with the hub", exc)
                return
            old = self._hubs.get(node)
            moved = 0
            for user_id in users:
                new_node = self.owner(user_id)
                if old is None or self._home.get(user_id) != node:
                    continue
                if new_node == node:
                    if node_alive:  # refused, yet still the owner: subscribe again, unhurried
                        gevent.sleep(0.1)
                        old.adopt(user_id, old.release(user_id, tell_server=False))
                    continue
                # The node holds no subscription for it any more (it said so, or it is gone).
                subs = old.release(user_id, tell_server=False)
                self._home[user_id] = new_node
                self._hub(new_node).adopt(user_id, subs)
                moved += 1
            if moved:
                log.info("moved %d users' channels from %s as the cluster's slots moved", moved, node)
            if old is not None and not old.users() and node not in self._masters():
                old.stop()
                del self._hubs[node]
        finally:
            self._rerouting = False

    def _masters(self) -> set[str]:
        return {n.name for n in self.cluster.get_primaries()}
