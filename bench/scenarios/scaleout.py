"""Scale-out: 2 web hosts (network namespaces), 10,000 streams, three ways to carry notifications.

- **single**: one redis-server, PUBLISH/SUBSCRIBE (the default);
- **cluster, classic**: a 3-master cluster (no replicas, like the single Redis), plain
  PUBLISH/SUBSCRIBE, each host's hub on a different node (the cluster bus copies every message
  to every node);
- **cluster, sharded**: ``REDIS_CLUSTER=1``: SPUBLISH/SSUBSCRIBE, each channel on its shard.

Each way: publish→event at 20,000 deliveries/s, then rising rates until p99 > 100 ms or a loss,
with the CPU each Redis process used. Needs root (``ip netns``) and Debian's redis-server 7.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis
from redis.cluster import RedisCluster as ClusterClient

from bench.harness import CpuMeter, Load, Rig, Server, percentiles, scenario
from harness.servers import Network, RedisCluster, RedisServer

TABS = 10  # per user, split over the two hosts


class Way:
    """How one way's servers are configured and how the benchmark publishes on it."""

    def __init__(self, name: str, envs: list[dict], publisher: Callable, redis_pids: dict) -> None:
        self.name, self.envs, self.publisher, self.redis_pids = name, envs, publisher, redis_pids


@scenario("scaleout")
def scaleout(rig: Rig) -> dict:
    """2 hosts on a 3-master cluster, 10,000 streams: single Redis vs classic vs sharded pub/sub."""
    tmp = Path(tempfile.mkdtemp(prefix="tidings-scaleout-"))
    tmp.chmod(0o755)
    net = Network().start()
    (tmp / "single").mkdir()
    (tmp / "cluster").mkdir()
    single = cluster = None
    out: dict = {"streams": rig.p["scaleout_streams"], "hosts": 2, "workers_per_host": 1}
    try:
        hosts = [net.host(), net.host()]
        single = RedisServer(tmp / "single", host=net.gateway).start()
        # Masters only: the single Redis has no replica either, and on these two shared cores a
        # replica's copy of every SPUBLISH would be charged to the cluster alone.
        cluster = RedisCluster(tmp / "cluster", replicas=0, host=net.gateway).start()
        masters = sorted(cluster.masters())
        base = {
            **rig.env,
            "WEB_CONCURRENCY": "1",
            "MAX_STREAMS_PER_USER": "0",  # the classic way's hubs cannot reach every key's node
            "QUEUE_REDIS_URL": single.url,
        }
        ways = [
            Way(
                "single Redis",
                [{**base, "REDIS_URL": single.url}] * 2,
                _plain(net.gateway, single.port, "publish"),
                {"redis": single.proc.pid},
            ),
            Way(
                "cluster, classic PUBLISH",
                [{**base, "REDIS_URL": f"redis://{net.gateway}:{masters[i]}/0"} for i in range(2)],
                _plain(net.gateway, masters[2], "publish"),
                {f"master {i + 1}": cluster.procs[p].pid for i, p in enumerate(masters)},
            ),
            Way(
                "cluster, sharded SPUBLISH",
                [{**base, "REDIS_URL": cluster.url, "REDIS_CLUSTER": "1"}] * 2,
                _sharded(cluster.url),
                {f"master {i + 1}": cluster.procs[p].pid for i, p in enumerate(masters)},
            ),
        ]
        out["ways"] = {}
        for way in ways:
            out["ways"][way.name] = run_way(rig, way, hosts, net.gateway)
            print("scaleout", way.name, _summary(out["ways"][way.name]), flush=True)
    finally:
        if cluster:
            cluster.stop()
        if single:
            single.kill()
        net.stop()
    return out


def _plain(host: str, port: int, command: str):
    conn = redis.Redis(host=host, port=port).connection_pool.get_connection()

    def publish(messages: list[tuple[str, str]]) -> None:
        _send_all({conn: [(command.upper(), channel, body) for channel, body in messages]})

    return publish


def _sharded(url: str):
    """SPUBLISH each message on its channel's master: redis-py's slot map, one connection per
    master (its ClusterPipeline costs the shared cores several times more per message)."""
    cluster = ClusterClient.from_url(url)
    conns: dict[str, redis.Connection] = {}
    owner: dict[str, redis.Connection] = {}

    def conn_of(channel: str) -> redis.Connection:
        if channel not in owner:
            node = cluster.nodes_manager.get_node_from_slot(cluster.keyslot(channel))
            if node.name not in conns:
                pool = redis.Redis(host=node.host, port=node.port).connection_pool
                conns[node.name] = pool.get_connection()
            owner[channel] = conns[node.name]
        return owner[channel]

    def publish(messages: list[tuple[str, str]]) -> None:
        batches: dict[redis.Connection, list] = {}
        for channel, body in messages:
            batches.setdefault(conn_of(channel), []).append(("SPUBLISH", channel, body))
        _send_all(batches)

    return publish


def _send_all(batches: dict) -> None:
    """Write every connection's commands, then read the replies: one wait for all the nodes,
    as a single Redis's pipeline has, rather than one round trip per node in turn."""
    for conn, commands in batches.items():
        conn.send_packed_command(conn.pack_commands(commands))
    for conn, commands in batches.items():
        for _ in commands:
            conn.read_response()


def run_way(rig: Rig, way: Way, hosts, gateway: str) -> dict:
    servers = [
        Server("wsgi:app", env, 1, rig.tmp, f"scaleout-{way.name.split()[-1].lower()}-{i}", host=h)
        for i, (env, h) in enumerate(zip(way.envs, hosts, strict=True))
    ]
    loads = [Load(s.port, 1, host=s.ip) for s in servers]
    try:
        for load in loads:
            load.same({"cmd": "config", "reconnect": False})
        streams = rig.p["scaleout_streams"]
        users = rig.users[: streams // TABS]
        for n, load in enumerate(loads):
            specs = [
                {"cookie": u["cookie"], "user_id": u["id"], "path": "/stream", "src": gateway}
                for i in range(streams)
                if i % 2 == n and (u := users[i % len(users)])
            ]
            opened = load.open(specs)
            assert opened["opened"] == len(specs), opened
        time.sleep(1)
        # Warm up every way alike (connections to each node, the publisher's slot lookups).
        publish_run(rig, way, servers, loads, rig.p["scaleout_rates"][0], 2.0)
        result = {
            "publish_to_event": publish_run(
                rig, way, servers, loads, rig.p["scaleout_rates"][1], rig.p["duration"]
            )
        }
        steps, best = [], 0
        for rate in rig.p["scaleout_rates"]:
            r = publish_run(rig, way, servers, loads, rate, rig.p["duration"])
            steps.append(r)
            if r["lost"] or r["latency_ms"].get("p99", 1e9) > 100:
                break
            best = r["achieved_deliveries_per_s"]
        result["rate_steps"] = steps
        result["max_sustained_deliveries_per_s"] = best
        return result
    finally:
        for load in loads:
            load.close()
            load.exit()
        for server in servers:
            server.stop()


def publish_run(rig: Rig, way: Way, servers, loads, rate: float, duration: float) -> dict:
    """Events to the users' channels so that deliveries/s = rate (``TABS`` each); latency at the tabs."""
    for load in loads:
        load.take()
    pids = {name: [pid] for name, pid in way.redis_pids.items()}
    pids["web hosts"] = [pid for s in servers for pid in s.worker_pids()]
    pids["publisher"] = [os.getpid()]
    pids["load clients"] = [proc.pid for load in loads for proc in load.procs]
    cpu = CpuMeter(pids)
    per_second = rate / TABS
    n_users = rig.p["scaleout_streams"] // TABS
    sent, start, tick = 0, time.time(), 0.001
    while (now := time.time()) < start + duration:
        due = int((now - start + tick) * per_second) - sent
        if due > 0:
            batch = []
            for _ in range(due):
                uid = rig.users[sent % n_users]["id"]
                t = time.time()
                batch.append(
                    (f"notifications:{uid}", json.dumps({"name": "bench", "data": {"t": t}, "timestamp": t}))
                )
                sent += 1
            way.publisher(batch)
        time.sleep(max(0.0, start + sent / per_second - time.time()))
    elapsed = time.time() - start
    cores = cpu.cores_used(elapsed)
    expected = sent * TABS
    got: list[float] = []
    quiet, deadline = time.time(), time.time() + 15
    while len(got) < expected and time.time() < deadline and time.time() - quiet < 1.0:
        time.sleep(0.2)
        more = [x for load in loads for x in load.take()["latencies"]]
        if more:
            got += more
            quiet = time.time()
    return {
        "target_deliveries_per_s": rate,
        "achieved_deliveries_per_s": round(expected / elapsed),
        "expected": expected,
        "received": len(got),
        "lost": expected - len(got),
        "latency_ms": percentiles(got),
        "cores_used": cores,
    }


def _summary(r: dict) -> str:
    lt = r["publish_to_event"]["latency_ms"]
    return f"p50 {lt.get('p50')} p99 {lt.get('p99')} ms; max {r['max_sustained_deliveries_per_s']}/s"
