"""The publish API's throughput, single and batched, and publish→browser latency at that rate.

    python -m bench.api [--seconds 10] [--clients 8] [--users 100]

gunicorn (2 gevent workers, as `make run`) on a private PostgreSQL and Redis; one SSE stream per
recipient, opened with the user's session cookie as a browser tab's. For ``--seconds`` each,
``--clients`` threads POST as fast as answers come back: one recipient per request, then
batches of 100. Latency runs from just before a POST to the moment the recipient's stream
delivers that notification's id (at the rate the test itself reaches). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.harness import create_users, machine, percentiles
from harness.clients import SSE
from harness.servers import LiveServer, PostgresServer, RedisServer, migrate

KIND = {"build_finished": {"per": "build", "title": "Build {build} finished"}}


class Streams:
    """One SSE stream per user; when each notification id arrived."""

    def __init__(self, url: str, users: list[dict]) -> None:
        self.arrived: dict[int, float] = {}
        self.lock = threading.Lock()
        self.threads = []
        self.stop = threading.Event()
        for user in users:
            s = SSE.open(url, "/stream", {"Cookie": user["cookie"]}, 30)
            assert s.status == 200, s.status
            t = threading.Thread(target=self._read, args=(s,), daemon=True)
            t.start()
            self.threads.append(t)

    def _read(self, s: SSE) -> None:
        while not self.stop.is_set():
            try:
                block = s.next_block()
            except OSError:
                return
            if block is None:
                return
            if block.id and block.event == "build_finished":
                with self.lock:
                    self.arrived[int(block.id)] = time.monotonic()


def run_phase(
    url: str, token: str, users: list[dict], batch: int, seconds: float, clients: int, streams: Streams
):
    sent: list[tuple[float, list[int]]] = []
    errors: dict[int, int] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    counter = itertools.count()

    def client() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            while time.monotonic() < deadline:
                n = next(counter)
                to = [users[(n * batch + i) % len(users)]["username"] for i in range(batch)]
                body = {"to": to if batch > 1 else to[0], "kind": "build_finished", "data": {"build": str(n)}}
                started = time.monotonic()
                r = http.post("/api/v1/notifications", json=body)
                with lock:
                    if r.status_code == 201:
                        sent.append((started, [x["id"] for x in r.json()["notifications"]]))
                    else:
                        errors[r.status_code] = errors.get(r.status_code, 0) + 1

    began = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    time.sleep(2)  # the last deliveries
    latencies, missing = [], 0
    with streams.lock:
        for started, ids in sent:
            for id_ in ids:
                if id_ in streams.arrived:
                    latencies.append(streams.arrived[id_] - started)
                else:
                    missing += 1
    notifications = sum(len(ids) for _, ids in sent)
    return {
        "batch": batch,
        "requests_per_s": round(len(sent) / elapsed, 1),
        "notifications_per_s": round(notifications / elapsed, 1),
        "latency_ms": percentiles(latencies),
        "not_delivered": missing,
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--users", type=int, default=100)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise

    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    redis_server = RedisServer(tmp).start()
    (tmp / "pg").mkdir()
    os.chmod(tmp, 0o755)
    pg = PostgresServer(tmp / "pg").start()
    kinds = tmp / "kinds.json"
    kinds.write_text(json.dumps(KIND))
    env = {
        "DATABASE_URL": pg.url,
        "REDIS_URL": redis_server.url,
        "SECRET_KEY": "bench-secret",
        "WEB_CONCURRENCY": "2",
        "NOTIFICATION_KINDS_FILE": str(kinds),
        "API_RATE": "1000000 per minute",
        "STREAM_RATE": "1000000 per minute",
        "MAX_STREAMS_PER_USER": "0",
    }
    migrate({**os.environ, **env})
    users = create_users(pg.url, args.users)
    created = subprocess.run(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "wsgi",
            "keys",
            "create",
            "bench",
            "--kinds",
            "build_finished",
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    token = created.stdout.strip()
    server = LiveServer(env, tmp / "gunicorn.log").start()
    try:
        streams = Streams(server.url, users)
        results = [
            run_phase(server.url, token, users, batch, args.seconds, args.clients, streams)
            for batch in (1, 100)
        ]
        streams.stop.set()
    finally:
        server.stop()
        pg.stop()
        redis_server.kill()
    m = machine()
    print(
        f"`python -m bench.api --seconds {args.seconds:g} --clients {args.clients} --users {args.users}` on "
        f"{m['cores']} cores, {m['memory_gb']} GB, Python {m['python']}; {m['date']}\n"
    )
    print(
        "| request | requests/s | notifications/s | publish→stream p50 / p90 / p99 / max (ms) "
        "| not delivered | errors |"
    )
    print("|---|---|---|---|---|---|")
    for r in results:
        lat = r["latency_ms"]
        request = "single" if r["batch"] == 1 else f"batch of {r['batch']}"
        print(
            f"| {request} | {r['requests_per_s']} | "
            f"{r['notifications_per_s']} | {lat.get('p50')} / {lat.get('p90')} / {lat.get('p99')} / "
            f"{lat.get('max')} | "
            f"{r['not_delivered']} | {r['errors'] or 'none'} |"
        )


if __name__ == "__main__":
    main()
