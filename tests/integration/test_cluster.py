"""Cluster mode on a real Redis Cluster: 3 masters and 3 replicas of Debian's redis-server 7.

Sharded pub/sub: publishers SPUBLISH, each worker's hub holds one connection per master that
owns its users' channels and SSUBSCRIBEs each channel there; RQ stays on a plain Redis.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
import redis

from harness.clients import WebUser, registered, user_id
from harness.servers import ROOT, LiveServer, RedisCluster, wait_until
from harness.tools import REDIS7
from tests.conftest import need


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    need(REDIS7)
    nodes = RedisCluster(tmp_path_factory.mktemp("cluster")).start()
    yield nodes
    nodes.stop()


@pytest.fixture(scope="module")
def cluster_env(sqlite_env, cluster, redis_url):
    # One worker, so "one hub connection per master" can be counted on each node.
    return {
        **sqlite_env,
        "REDIS_CLUSTER": "1",
        "REDIS_URL": cluster.url,
        "QUEUE_REDIS_URL": redis_url,
        "WEB_CONCURRENCY": "1",
    }


@pytest.fixture(scope="module")
def cluster_server(cluster_env, tmp_path_factory):
    live = LiveServer(cluster_env, tmp_path_factory.mktemp("cluster-log") / "gunicorn.log").start()
    yield live
    live.stop()


def users_on_every_master(server, env, cluster, prefix: str) -> dict[int, WebUser]:
    """Register users until each master owns one of their channels; one user per master."""
    found: dict[int, WebUser] = {}
    n = 0
    while len(found) < len(cluster.masters()):
        user = registered(server.url, f"{prefix}{n}")
        user.id = user_id(env, user.username)
        found.setdefault(cluster.owner(f"notifications:{user.id}"), user)
        n += 1
    return found


def hub_connections(port: int) -> int:
    clients = redis.Redis(port=port).client_list()
    return sum(1 for c in clients if c.get("name") == "tidings-hub")


def test_events_reach_users_on_every_master_through_one_hub_connection_per_master(
    cluster, cluster_env, cluster_server
):
    users = users_on_every_master(cluster_server, cluster_env, cluster, "shard")
    sender = registered(cluster_server.url, "shardsender")
    streams = {}
    for port, user in users.items():
        s = user.stream(timeout=10)
        assert s.status == 200
        streams[port] = s
    for port, user in users.items():
        assert sender.send(user.username, f"to the user on {port}").status_code == 302
    for port, s in streams.items():
        assert s.next_event("unread_message_count").json["data"] == 1
        assert s.next_event("new_message").json["data"]["preview"] == f"to the user on {port}"

    for port, user in users.items():
        # The channel is subscribed on its owner, sharded, and nowhere else.
        channels = [c.decode() for c in redis.Redis(port=port).execute_command("PUBSUB SHARDCHANNELS")]
        assert f"notifications:{user.id}" in channels
        others = [p for p in users if p != port]
        for other in others:
            theirs = redis.Redis(port=other).execute_command("PUBSUB SHARDCHANNELS")
            assert f"notifications:{user.id}".encode() not in theirs
        # One pub/sub connection per master this worker needs, not one per channel or stream.
        assert hub_connections(port) == 1
    for s in streams.values():
        s.close()


def test_flask_follow_prints_a_users_sharded_messages(cluster, cluster_env, cluster_server):
    (user, *_) = users_on_every_master(cluster_server, cluster_env, cluster, "followed").values()
    sender = registered(cluster_server.url, "followsender")
    follow = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "follow", user.username, "--count", "2"],
        cwd=ROOT,
        env={**cluster_server.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = threading.Event()
    lines: list[str] = []

    def read_stderr() -> None:
        for line in follow.stderr:
            if line.startswith("following"):
                ready.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    assert ready.wait(20), "flask follow started"
    assert sender.send(user.username, "seen by the operator").status_code == 302
    out, _ = follow.communicate(timeout=20)
    lines = out.strip().splitlines()
    assert follow.returncode == 0
    assert any('"unread_message_count"' in line for line in lines)
    assert any("seen by the operator" in line for line in lines)


class Traffic:
    """A message to ``user`` every 100 ms while a fault happens; counts what was accepted."""

    def __init__(self, sender: WebUser, user: WebUser) -> None:
        self.sender, self.user = sender, user
        self.stop = threading.Event()
        self.ok = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            try:
                if self.sender.send(self.user.username, f"m{n}").status_code == 302:
                    self.ok += 1
            except Exception:  # noqa: BLE001 - a refused send is counted by not counting it
                pass
            n += 1
            time.sleep(0.1)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(15)


def read_until_count(stream, want: int, timeout: float) -> list[int]:
    """Events' ids on ``stream`` until its unread count reaches ``want``."""
    ids: list[int] = []
    deadline = time.monotonic() + timeout
    count = None
    stream.sock.settimeout(2)
    while count != want:
        assert time.monotonic() < deadline, f"the stream's count stayed at {count}, not {want}"
        try:
            block = stream.next_block()
        except TimeoutError:
            continue
        assert block is not None, "the stream ended"
        if block.id:
            ids.append(int(block.id))
        if block.event == "unread_message_count":
            count = block.json["data"]
    return ids


def messages_to(env, user: WebUser) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(env["DATABASE_URL"])
    with engine.connect() as conn:
        n = conn.execute(
            sa.text("SELECT count(*) FROM message WHERE recipient_id = :u"), {"u": user.id}
        ).scalar()
    engine.dispose()
    return n


def test_a_killed_master_whose_replica_takes_over_loses_nothing(cluster, cluster_env, cluster_server):
    users = users_on_every_master(cluster_server, cluster_env, cluster, "failover")
    victim, user = next(iter(users.items()))
    sender = registered(cluster_server.url, "failoversender")
    stream = user.stream(timeout=10)
    assert stream.status == 200
    with Traffic(sender, user) as traffic:
        wait_until(lambda: traffic.ok >= 5, 20, "traffic flowing")
        cluster.kill(victim)
        wait_until(lambda: victim not in cluster.masters(), 30, "a replica promoted")
        cluster.wait_ok()
        before = traffic.ok
        wait_until(lambda: traffic.ok >= before + 10, 30, "traffic after the failover")
    truth = messages_to(cluster_env, user)
    ids = read_until_count(stream, truth, 30)
    assert len(ids) == len(set(ids)), "nothing twice on the connection"
    stream.close()
    # The old master comes back as its successor's replica: three masters, each with a replica.
    cluster.start_node(victim)
    cluster.wait_ok()


def test_a_slot_migration_of_a_busy_users_channel_loses_nothing(cluster, cluster_env, cluster_server):
    users = users_on_every_master(cluster_server, cluster_env, cluster, "resharded")
    source, busy = next(iter(users.items()))
    target = next(p for p in users if p != source)
    sender = registered(cluster_server.url, "reshardsender")
    stream = busy.stream(timeout=10)
    assert stream.status == 200
    ids = []
    with Traffic(sender, busy) as traffic:
        wait_until(lambda: traffic.ok >= 5, 20, "traffic flowing")
        ids_of = {p: redis.Redis(port=p).cluster("myid") for p in (source, target)}
        # redis-cli moves the source's lowest slots first: as many as reach the busy channel's,
        # so the source keeps the rest (and the cluster its three masters).
        slot = redis.Redis(port=source).cluster("keyslot", f"notifications:{busy.id}")
        slots = sum(min(b, slot) - a + 1 for a, b in cluster.masters()[source] if a <= slot)
        subprocess.run(
            [
                RedisCluster.CLI, "--cluster", "reshard", f"127.0.0.1:{source}",
                "--cluster-from", ids_of[source], "--cluster-to", ids_of[target],
                "--cluster-slots", str(slots), "--cluster-yes",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        # Every node learns the new owner by gossip, a replica last.
        wait_until(lambda: cluster.owner(f"notifications:{busy.id}") == target, 10, "the slot moved")
        moved_at = traffic.ok
        wait_until(lambda: traffic.ok >= moved_at + 10, 30, "traffic after the move")
    truth = messages_to(cluster_env, busy)
    ids = read_until_count(stream, truth, 30)
    assert len(ids) == len(set(ids)), "nothing twice on the connection"
    channels = redis.Redis(port=target).execute_command("PUBSUB SHARDCHANNELS")
    assert f"notifications:{busy.id}".encode() in channels, "the hub followed the channel"
    stream.close()


def test_rate_limits_and_the_stream_cap_count_in_the_cluster(cluster, cluster_env, tmp_path):
    env = {
        **cluster_env,
        "REDIS_URL": cluster.url,  # a live seed: an earlier test killed a master
        "RATELIMIT_ENABLED": "1",
        "SEND_RATE": "3 per minute",
        "MAX_STREAMS_PER_USER": "1",
    }
    limited = LiveServer(env, tmp_path / "gunicorn.log").start()
    try:
        dave, erin = registered(limited.url, "limiteddave"), registered(limited.url, "limitederin")
        first = erin.stream(timeout=10)
        assert first.status == 200
        second = erin.stream(timeout=10)
        assert second.status == 429 and "Retry-After" in {k.title() for k in second.headers}
        second.close()
        assert [dave.send(erin.username, f"m{i}").status_code for i in range(4)] == [302, 302, 302, 429]
        first.close()
    finally:
        limited.stop()
