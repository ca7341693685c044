"""The cluster hub's routing: a channel's SSUBSCRIBE goes to its owner, and follows it when the
slot moves (the server's own sunsubscribe) or the node is lost (failover), with a store re-read.

Each node's pub/sub connection is scripted (as in test_hub.py); the slot map is a dict. The
real cluster is in tests/integration/test_cluster.py.
"""

from __future__ import annotations

import gevent
import gevent.queue
import pytest
import redis

from flask_tidings.events import Event
from flask_tidings.hub import Hub
from flask_tidings.shards import ShardedHub
from tests.unit.test_hub import ScriptedPubSub


class NodeConnection(ScriptedPubSub):
    """A sharded pub/sub connection to one node (SSUBSCRIBE is confirmed as SUBSCRIBE is)."""

    def channels(self) -> list[str]:
        return [a[1] for a in self.sent if a[0] == "SSUBSCRIBE"]


class FakeNode:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeCluster:
    """What ShardedHub asks of redis-py's RedisCluster: a slot per channel, its owner, a refresh."""

    def __init__(self, owners: dict[str, str]) -> None:
        self.owners = owners  # channel -> node name, as the cluster says after the next refresh
        self.current = dict(owners)
        self.down: set[str] = set()
        self.conns: dict[str, list[NodeConnection]] = {}
        self.nodes_manager = self

    def keyslot(self, channel: str) -> str:
        return channel

    def get_node_from_slot(self, slot: str) -> FakeNode:
        return FakeNode(self.current[slot])

    def initialize(self) -> None:
        self.current = dict(self.owners)

    def get_primaries(self) -> list[FakeNode]:
        return [FakeNode(n) for n in set(self.current.values())]

    def connect(self, node: str) -> NodeConnection:
        if node in self.down:
            raise redis.ConnectionError(f"{node} is down")
        conn = NodeConnection()
        self.conns.setdefault(node, []).append(conn)
        return conn


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.rereads = 0

    def send_event(self, event: Event) -> None:
        self.events.append(event)

    def reread(self) -> None:
        self.rereads += 1

    def close(self) -> None:
        pass


@pytest.fixture
def cluster():
    return FakeCluster({f"notifications:{u}": node for u, node in ((1, "a:1"), (2, "b:2"), (3, "a:1"))})


@pytest.fixture
def hub(cluster):
    def make_hub(host, port, on_moved, on_lost):
        return Hub(
            lambda: cluster.connect(f"{host}:{port}"),
            ping_interval=60,
            subscribe_timeout=1,
            min_backoff=0.01,
            max_backoff=0.05,
            sharded=True,
            on_moved=on_moved,
            on_lost=on_lost,
        )

    sharded = ShardedHub(cluster, make_hub)
    yield sharded
    sharded.stop()


def attached(hub: ShardedHub, user_id: int) -> Sink:
    sink = Sink()
    hub.subscribe(user_id).attach(sink)
    return sink


def push(cluster: FakeCluster, node: str, reply) -> None:
    cluster.conns[node][-1].replies.put(reply)


def message(user_id: int, n: int) -> list:
    event = Event(name="unread_message_count", data=n, timestamp=1.0, id=n)
    return [b"smessage", f"notifications:{user_id}".encode(), event.to_json().encode()]


def wait_for(predicate, what: str) -> None:
    with gevent.Timeout(3, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(0.01)


def test_each_channel_is_subscribed_on_its_owner_through_one_connection_per_node(hub, cluster):
    sinks = {u: attached(hub, u) for u in (1, 2, 3)}
    assert cluster.conns["a:1"][-1].channels() == ["notifications:1", "notifications:3"]
    assert cluster.conns["b:2"][-1].channels() == ["notifications:2"]
    assert len(cluster.conns["a:1"]) == len(cluster.conns["b:2"]) == 1
    push(cluster, "b:2", message(2, 7))
    wait_for(lambda: sinks[2].events, "the event on b")
    assert sinks[2].events[0].data == 7 and not sinks[1].events and not sinks[3].events


def test_a_migrated_slot_is_followed_and_its_streams_re_read_the_store(hub, cluster):
    sinks = {u: attached(hub, u) for u in (1, 3)}
    cluster.owners["notifications:1"] = "c:3"  # a reshard moves user 1's slot to a new master
    push(cluster, "a:1", [b"sunsubscribe", b"notifications:1", 1])
    wait_for(lambda: "c:3" in cluster.conns and cluster.conns["c:3"][-1].channels(), "the move")
    assert cluster.conns["c:3"][-1].channels() == ["notifications:1"]
    wait_for(lambda: sinks[1].rereads == 1, "the store re-read")
    push(cluster, "c:3", message(1, 9))
    wait_for(lambda: sinks[1].events, "the event on the new owner")
    assert sinks[3].rereads == 0, "the user who stayed is left alone"


def test_a_lost_master_hands_its_channels_to_the_promoted_replica(hub, cluster):
    sinks = {u: attached(hub, u) for u in (1, 2, 3)}
    cluster.down.add("a:1")
    for channel in ("notifications:1", "notifications:3"):
        cluster.owners[channel] = "a-replica:4"  # the failover promoted a's replica
    push(cluster, "a:1", redis.ConnectionError("connection reset"))
    wait_for(lambda: "a-replica:4" in cluster.conns, "the promoted replica's connection")
    conn = cluster.conns["a-replica:4"][-1]
    wait_for(lambda: sorted(conn.channels()) == ["notifications:1", "notifications:3"], "both channels moved")
    wait_for(lambda: sinks[1].rereads == 1 and sinks[3].rereads == 1, "their streams re-read the store")
    assert sinks[2].rereads == 0
    wait_for(lambda: "a:1" not in hub.stats()["nodes"], "the dead node's hub dropped")
    push(cluster, "a-replica:4", message(3, 4))
    wait_for(lambda: sinks[3].events, "delivery from the new master")
