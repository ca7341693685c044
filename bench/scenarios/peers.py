"""The peer (Flask-SSE on the same gunicorn and Redis) and the floor (a bare WSGI generator)."""

from __future__ import annotations

import time

from bench.harness import Rig, scenario


@scenario("flask_sse")
def flask_sse(rig: Rig) -> dict:
    """The peer on the same load: one set of streams, then the same publish runs and rate steps."""
    p = rig.p
    with rig.serving("flask-sse", app="bench.peers.flask_sse_app:app") as (server, load):
        out: dict = {}
        base_rss, base_redis = server.rss(), rig.redis.info()
        streams = p["peer_streams"]
        users = streams // 10
        r = load.open(rig.specs(streams, users, peer=True))
        # Its streams subscribe as the server works through the backlog: wait until they all have.
        deadline = time.time() + 120
        while rig.redis.info()["connected_clients"] < r["opened"] and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        info = rig.redis.info()
        out["levels"] = [
            {
                "streams": streams,
                "users": users,
                "opened": r["opened"],
                "errors": r["errors"],
                "app_rss_per_stream_kb": round((server.rss() - base_rss) / max(1, r["opened"]) / 1024, 2),
                "redis_used_memory_per_stream_b": round(
                    (info["used_memory"] - base_redis["used_memory"]) / max(1, r["opened"]), 1
                ),
                "redis_connected_clients": info["connected_clients"],
            }
        ]
        print("flask-sse level", out["levels"][-1], flush=True)
        out["publish_to_event"] = {}
        for n, rate in p["publish_loads"]:
            if n != streams:
                continue
            r = rig.publish_run(server, load, users, 10, rate, p["duration"], peer=True)
            rig.samples[f"Flask-SSE publish→event ({streams} streams, {rate}/s)"] = r.pop("_samples")
            out["publish_to_event"][f"{streams}@{rate}"] = r
            print("flask-sse publish", streams, rate, r, flush=True)
        out["delivery_rate"] = rig.rate_steps(server, load, users, 10, peer=True)
        print("flask-sse rate", out["delivery_rate"]["max_sustained_deliveries_per_s"], flush=True)
    return out


@scenario("floor")
def floor(rig: Rig) -> dict:
    """RSS per idle stream of a bare WSGI generator (a greenlet per stream) under the same gunicorn."""
    streams = rig.p["peer_streams"]
    with rig.serving("floor", app="bench.peers.minimal_app:app") as (server, load):
        base = server.rss()
        r = load.open(rig.specs(streams, max(1, streams // 10)))
        time.sleep(2)
        out = {
            "streams": streams,
            "opened": r["opened"],
            "app_rss_per_stream_kb": round((server.rss() - base) / max(1, r["opened"]) / 1024, 2),
        }
        print("floor", out, flush=True)
    return out
