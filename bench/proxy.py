"""Behind nginx: publish→event latency direct and through deploy/nginx/ (HTTP/2, TLS), and the
slow-body attack against gunicorn alone and through nginx.

``python -m bench.proxy [--events N] [--slow N]`` (``make bench-proxy``) starts a private
redis-server, ``gunicorn -c gunicorn.conf.py`` (2 workers, default settings) and Debian's nginx
with the project's config, and writes docs/benchmarks/proxy.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
import redis

from harness.clients import WebUser, slow_bodies, user_id
from harness.servers import LiveServer, NginxServer, RedisServer, make_server_env

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "benchmarks" / "proxy.md"


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max, in milliseconds."""
    ordered = sorted(values)
    return {
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "max": ordered[-1] * 1000,
        "n": len(ordered),
    }


class Reader(threading.Thread):
    """Reads one stream, timing each announcement from the publish time it carries."""

    def __init__(self, client: httpx.Client, expected: int) -> None:
        super().__init__(daemon=True)
        self.client, self.expected = client, expected
        self.delays: list[float] = []
        self.ready = threading.Event()
        self.http_version = ""

    def run(self) -> None:
        with self.client.stream("GET", "/stream") as r:
            self.http_version = r.http_version
            lines = r.iter_lines()
            for line in lines:
                if line.startswith("retry:"):
                    self.ready.set()
                if line.startswith("data: ") and '"announcement"' in line:
                    self.delays.append(time.time() - json.loads(line[6:])["data"]["t"])
                    if len(self.delays) == self.expected:
                        return


def latency(web: LiveServer, nginx: NginxServer, redis_url: str, events: int) -> dict:
    user = WebUser(web.url, "bench_proxy")
    user.register()  # and logged in
    cookies = user.http.cookies
    direct = httpx.Client(base_url=web.url, cookies=cookies, timeout=30)
    proxied = httpx.Client(base_url=nginx.url, cookies=cookies, timeout=30, http2=True, verify=False)
    readers = [Reader(direct, events), Reader(proxied, events)]
    for reader in readers:
        reader.start()
        reader.ready.wait(10)
    time.sleep(0.5)
    r = redis.Redis.from_url(redis_url)
    channel = f"notifications:{user_id(web.env, user.username)}"
    for i in range(events):
        r.publish(channel, json.dumps({"name": "announcement", "data": {"t": time.time(), "i": i}}))
        time.sleep(0.005)
    for reader in readers:
        reader.join(30)
    return {
        "direct": {"protocol": readers[0].http_version, **percentiles(readers[0].delays)},
        "nginx": {"protocol": readers[1].http_version, **percentiles(readers[1].delays)},
    }


def get_time(url: str, timeout: float = 10.0) -> str:
    """How long ``GET url`` takes, or that it timed out."""
    started = time.monotonic()
    try:
        httpx.get(url, verify=False, timeout=timeout).raise_for_status()
    except httpx.TimeoutException:
        return f"timed out (> {timeout:.0f} s)"
    return f"{(time.monotonic() - started) * 1000:.1f} ms"


def slow_body(web: LiveServer, nginx: NginxServer, count: int) -> dict:
    results = {"sockets": count, "idle": get_time(web.url + "/")}
    socks = slow_bodies(web.port, count)
    time.sleep(1)
    results["direct"] = get_time(web.url + "/")
    for s in socks:
        s.close()
    time.sleep(2)
    socks = slow_bodies(nginx.port, count, tls=True)
    time.sleep(1)
    results["nginx"] = get_time(nginx.url + "/")
    results["direct_meanwhile"] = get_time(web.url + "/")
    for s in socks:
        s.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=2100)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = Path(tempfile.mkdtemp(prefix="tidings-bench-proxy-"))
    own_redis = RedisServer(tmp).start()
    env = make_server_env(tmp, f"sqlite:///{tmp / 'tidings.db'}", own_redis.url)
    env.update(TRUSTED_PROXIES="1", SSE_HEARTBEAT_SECONDS="15")
    web = LiveServer(env, tmp / "gunicorn.log").start()
    nginx = NginxServer(tmp / "nginx", [f"127.0.0.1:{web.port}"]).start()
    try:
        lat = latency(web, nginx, own_redis.url, args.events)
        slow = slow_body(web, nginx, args.slow)
    finally:
        nginx.stop()
        web.stop()
        own_redis.kill()
    machine = f"{platform.machine()}, {resource.getpagesize()} B pages, Python {platform.python_version()}"
    lines = [
        "# Behind nginx: latency and the slow-body attack",
        "",
        f"`make bench-proxy` on this machine ({machine}; client, Redis, gunicorn and nginx share it).",
        "",
        f"## publish→event, {args.events} events at 200/s to one user's stream (milliseconds)",
        "",
        "| path | protocol | p50 | p99 | max | events |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in lat.items():
        figures = " | ".join(f"{row[k]:.2f}" for k in ("p50", "p99", "max"))
        lines.append(f"| {name} | {row['protocol']} | {figures} | {row['n']} |")
    lines += [
        "",
        f"## `GET /` while {slow['sockets']} clients trickle a POST body (one byte, then nothing)",
        "",
        "| | `GET /` |",
        "|---|---|",
        f"| gunicorn, no attack | {slow['idle']} |",
        f"| gunicorn straight, under attack | {slow['direct']} |",
        f"| through nginx, under attack | {slow['nginx']} |",
        f"| gunicorn straight while nginx holds the attack | {slow['direct_meanwhile']} |",
        "",
    ]
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
