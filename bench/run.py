"""Orchestrates the benchmark: ``python -m bench.run [--quick]`` (``make bench`` / ``make bench-quick``).

Starts a private redis-server and ``gunicorn -c gunicorn.conf.py`` (Tidings, then the Flask-SSE
peer) on loopback, and load-client processes (bench/loadclient.py), then measures what
docs/benchmarks/README.md lists. Results: JSON, Markdown and a PNG of latency distributions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
import redis

from tests.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PASSWORD = "bench-password"

QUICK = {
    "streams_levels": [200, 1000],
    "users": 100,  # tabs per user = streams / users
    "send_at": [1000],
    "sends": 30,
    "publish_loads": [(1000, 2000)],  # (streams, deliveries per second)
    "rate_steps": [2000, 5000, 10000],
    "rate_streams": 1000,  # the peer is measured at peer_streams, with the same publish loads
    "duration": 3.0,
    "idle_seconds": 5.0,
    "hold": (2000, 2.0),
    "polling_clients": 500,
    "polling_seconds": 8.0,
    "peer_streams": 1000,
    "load_processes": 2,
}
FULL = {
    "streams_levels": [1000, 5000, 10000],
    "users": 1000,
    "send_at": [1000, 10000],
    "sends": 100,
    "publish_loads": [(5000, 10000), (10000, 20000)],
    "rate_steps": [2500, 5000, 10000, 15000, 20000, 25000, 30000, 40000, 50000, 60000, 70000, 80000, 100000],
    "rate_streams": 5000,
    "duration": 10.0,
    "idle_seconds": 30.0,
    "hold": (50000, 30.0),
    "polling_clients": 10000,
    "polling_seconds": 40.0,
    "peer_streams": 5000,
    "load_processes": 3,
}


def percentiles(samples: list[float]) -> dict:
    """p50/p90/p99/max in milliseconds."""
    if not samples:
        return {"n": 0}
    s = sorted(samples)

    def pick(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2)

    return {"n": len(s), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(s[-1] * 1000, 2)}


class Server:
    """gunicorn -c gunicorn.conf.py <app>, with per-worker counters in a metrics directory."""

    def __init__(self, app: str, env: dict, workers: int, tmp: Path, name: str) -> None:
        self.port = free_port()
        self.metrics = tmp / f"metrics-{name}"
        self.metrics.mkdir()
        self.env = {
            **os.environ,
            **env,
            "PORT": str(self.port),
            "WEB_CONCURRENCY": str(workers),
            "TIDINGS_METRICS_DIR": str(self.metrics),
        }
        self.env.pop("BIND", None)
        self.log = open(tmp / f"{name}.log", "ab")
        self.proc = subprocess.Popen(
            [BIN / "gunicorn", "-c", "gunicorn.conf.py", app],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.wait_ready()

    def wait_ready(self, path: str = "/") -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                httpx.get(self.url + path, timeout=1)
                if len(self.worker_pids()) >= self.workers:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.url} did not start")

    def worker_pids(self) -> list[int]:
        return [p.pid for p in psutil.Process(self.proc.pid).children()]

    def rss(self) -> int:
        return sum(psutil.Process(pid).memory_info().rss for pid in self.worker_pids())

    def counters(self) -> dict:
        total = {"sql_statements": 0, "http_requests": 0, "streams": 0}
        for pid in self.worker_pids():
            path = self.metrics / f"{pid}.json"
            if path.exists():
                data = json.loads(path.read_text())
                for k in total:
                    total[k] += data.get(k, 0)
        return total

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class CpuMeter:
    """CPU time used by groups of processes between construction and ``cores_used``."""

    def __init__(self, groups: dict[str, list[int]]) -> None:
        self.groups = groups
        self.start = {name: self._cpu(pids) for name, pids in groups.items()}

    @staticmethod
    def _cpu(pids: list[int]) -> float:
        total = 0.0
        for pid in pids:
            try:
                t = psutil.Process(pid).cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def cores_used(self, elapsed: float) -> dict[str, float]:
        """Cores' worth of CPU each group used over ``elapsed`` seconds."""
        return {
            name: round((self._cpu(pids) - self.start[name]) / elapsed, 2)
            for name, pids in self.groups.items()
        }


class Load:
    """Load-client processes, each holding part of the streams."""

    def __init__(self, port: int, processes: int) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.loadclient", "127.0.0.1", str(port)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(processes)
        ]

    def ask_all(self, cmds: list[dict]) -> list[dict]:
        for proc, cmd in zip(self.procs, cmds, strict=True):
            proc.stdin.write(json.dumps(cmd) + "\n")
            proc.stdin.flush()
        return [json.loads(proc.stdout.readline()) for proc in self.procs]

    def same(self, cmd: dict) -> list[dict]:
        return self.ask_all([cmd] * len(self.procs))

    def open(self, specs: list[dict]) -> dict:
        parts = [specs[i :: len(self.procs)] for i in range(len(self.procs))]
        results = self.ask_all([{"cmd": "open", "specs": p, "concurrency": 100} for p in parts])
        return {
            "opened": sum(r["opened"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "seconds": max(r["seconds"] for r in results),
            "last_error": next((r["last_error"] for r in results if r["last_error"]), ""),
        }

    def stats(self) -> dict:
        out: dict = {}
        for r in self.same({"cmd": "stats"}):
            for k, v in r.items():
                if isinstance(v, (int, float)) and k != "last_connect":
                    out[k] = out.get(k, 0) + v
            out["last_connect"] = max(out.get("last_connect", 0), r["last_connect"])
        return out

    def take(self) -> dict:
        lat, counts = [], []
        for r in self.same({"cmd": "take"}):
            lat += r["latencies"]
            counts += r["counts"]
        return {"latencies": lat, "counts": counts}

    def close(self) -> None:
        self.same({"cmd": "close"})

    def exit(self) -> None:
        for proc in self.procs:
            proc.stdin.write('{"cmd": "exit"}\n')
            proc.stdin.flush()
            proc.wait(10)


def src(i: int) -> str:
    return f"127.0.0.{2 + i % 249}"


class Bench:
    """One run."""

    def __init__(self, quick: bool, out: Path) -> None:
        self.p = QUICK if quick else FULL
        self.quick = quick
        self.out = out
        self.tmp = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
        self.results: dict = {
            "floor": {},
            "mode": "quick" if quick else "full",
            "machine": machine(),
            "tidings": {},
            "flask_sse": {},
            "polling": {},
        }
        self.samples: dict[str, list[float]] = {}
        self.redis = RedisServer(self.tmp, "--maxclients", "19000").start()
        self.db_url = f"sqlite:///{self.tmp / 'bench.db'}"
        self.env = {
            "REDIS_URL": self.redis.url,
            "DATABASE_URL": self.db_url,
            "SECRET_KEY": "bench-secret",
            "EXPORT_DIR": str(self.tmp / "exports"),
            # Flask-SSE and the floor hold a greenlet per stream: let every server take them all.
            "WORKER_CONNECTIONS": "25000",
            # A load test: thousands of streams per user and sends per second (CONTRACT).
            "RATELIMIT_ENABLED": "0",
        }
        subprocess.run(
            [BIN / "flask", "--app", "wsgi", "db", "upgrade"],
            cwd=ROOT,
            env={**os.environ, **self.env},
            check=True,
            capture_output=True,
        )
        n_users = max(self.p["users"], self.p["hold"][0] // 10, self.p["polling_clients"])
        self.users = create_users(self.db_url, n_users)

    # -- helpers -------------------------------------------------------------------

    def specs(self, n: int, users: int, peer: bool = False) -> list[dict]:
        """n streams spread evenly over the first ``users`` users (tabs = n / users).

        The peer takes its channel from the query string and sends headers only with the first event.
        """
        out = []
        for i in range(n):
            user = self.users[i % users]
            spec = {"cookie": user["cookie"], "user_id": user["id"], "path": "/stream", "src": src(i)}
            if peer:
                spec.update(path=f"/stream?channel=notifications:{user['id']}", lazy=True)
            out.append(spec)
        return out

    def publish_run(
        self, load: Load, users: int, tabs: int, rate: float, duration: float, peer: bool
    ) -> dict:
        """Publish bench events to ``users`` channels so that deliveries/s = rate; measure at the streams."""
        load.take()
        cpu = CpuMeter(
            {
                "app": self.server.worker_pids(),
                "load clients": [p.pid for p in load.procs],
                "redis": [self.redis.proc.pid],
                "publisher": [os.getpid()],
            }
        )
        per_second = rate / tabs
        client = redis.Redis(port=self.redis.port)
        sent = 0
        start = time.time()
        # Each event goes out at its own time (up to 1 ms early, pipelined with others due then),
        # so the load is a steady rate rather than bursts.
        tick = 0.001
        while (now := time.time()) < start + duration:
            due = int((now - start + tick) * per_second) - sent
            if due > 0:
                pipe = client.pipeline(transaction=False)
                for _ in range(due):
                    uid = self.users[sent % users]["id"]
                    data = {"t": time.time(), "seq": sent}
                    body = (
                        {"data": data, "type": "bench"}
                        if peer
                        else {"name": "bench", "data": data, "timestamp": data["t"]}
                    )
                    pipe.publish(f"notifications:{uid}", json.dumps(body))
                    sent += 1
                pipe.execute()
            time.sleep(max(0.0, start + (sent / per_second) - time.time()) if per_second else tick)
        elapsed = time.time() - start
        cores = cpu.cores_used(elapsed)
        got = self.drain(load, sent * tabs)
        expected = sent * tabs
        return {
            "target_deliveries_per_s": rate,
            "achieved_deliveries_per_s": round(expected / elapsed),
            "published": sent,
            "expected": expected,
            "received": len(got),
            "lost": expected - len(got),
            "latency_ms": percentiles(got),
            "cores_used": cores,
            "_samples": got,
        }

    def drain(self, load: Load, expected: int, patience: float = 15.0) -> list[float]:
        """Collect latencies until all ``expected`` arrived or none came for a second."""
        got: list[float] = []
        quiet_since, deadline = time.time(), time.time() + patience
        while len(got) < expected and time.time() < deadline and time.time() - quiet_since < 1.0:
            time.sleep(0.2)
            more = load.take()["latencies"]
            if more:
                got += more
                quiet_since = time.time()
        return got

    def rate_steps(self, load: Load, users: int, tabs: int, peer: bool) -> dict:
        """Rising rates until one fails twice (a lone spike on a shared machine gets a second try)."""
        steps, best = [], 0
        for rate in self.p["rate_steps"]:
            for _attempt in range(2):
                r = self.publish_run(load, users, tabs, rate, self.p["duration"], peer)
                r.pop("_samples")
                steps.append(r)
                ok = r["lost"] == 0 and r["latency_ms"].get("p99", 1e9) <= 100
                if ok:
                    break
            if not ok:
                break
            best = max(best, r["achieved_deliveries_per_s"])
        return {"steps": steps, "max_sustained_deliveries_per_s": best}

    # -- Tidings -------------------------------------------------------------------

    def tidings(self) -> None:
        p, res = self.p, self.results["tidings"]
        server = self.server = Server(
            "wsgi:app", self.env, int(os.environ.get("WEB_CONCURRENCY", "2")), self.tmp, "tidings"
        )
        load = Load(server.port, p["load_processes"])
        load.same({"cmd": "config", "retry_seconds": 3.0})
        try:
            base_rss, base_redis = server.rss(), self.redis.info()
            res["baseline"] = {"app_rss": base_rss, **base_redis}
            levels, opened = [], 0
            for level in p["streams_levels"]:
                users = max(1, min(p["users"], level // 10))
                load.close()
                r = load.open(self.specs(level, users))
                time.sleep(2)
                info = self.redis.info()
                rss = server.rss()
                levels.append(
                    {
                        "streams": level,
                        "users": users,
                        "opened": r["opened"],
                        "errors": r["errors"],
                        "connect_seconds": round(r["seconds"], 2),
                        "app_rss_per_stream_kb": round((rss - base_rss) / max(1, r["opened"]) / 1024, 2),
                        "redis_used_memory_per_stream_b": round(
                            (info["used_memory"] - base_redis["used_memory"]) / max(1, r["opened"]), 1
                        ),
                        "redis_connected_clients": info["connected_clients"],
                    }
                )
                print("tidings level", levels[-1], flush=True)
                if level in p["send_at"]:
                    res.setdefault("send_to_event", {})[str(level)] = self.send_to_event(
                        server, load, users, level // users
                    )
                opened = r["opened"]
            res["levels"] = levels
            # (f) idle cost at the largest level
            c0 = server.counters()
            time.sleep(p["idle_seconds"])
            c1 = server.counters()
            res["idle"] = {
                "streams": opened,
                "seconds": p["idle_seconds"],
                "sql_per_s": round((c1["sql_statements"] - c0["sql_statements"]) / p["idle_seconds"], 3),
                "http_requests_per_s": round(
                    (c1["http_requests"] - c0["http_requests"]) / p["idle_seconds"], 3
                ),
            }
            print("tidings idle", res["idle"], flush=True)
            # (d) publish→event and (e) delivery rate
            res["publish_to_event"] = {}
            for streams, rate in p["publish_loads"]:
                users = streams // 10
                load.close()
                load.open(self.specs(streams, users))
                time.sleep(1)
                r = self.publish_run(load, users, 10, rate, p["duration"], peer=False)
                self.samples[f"Tidings publish→event ({streams} streams, {rate}/s)"] = r.pop("_samples")
                res["publish_to_event"][f"{streams}@{rate}"] = r
                print("tidings publish", streams, rate, r, flush=True)
            load.close()
            load.open(self.specs(p["rate_streams"], p["rate_streams"] // 10))
            time.sleep(1)
            res["delivery_rate"] = self.rate_steps(load, p["rate_streams"] // 10, 10, peer=False)
            print("tidings rate", res["delivery_rate"]["max_sustained_deliveries_per_s"], flush=True)
            # (g) reconnect after the workers restart (HUP), browsers' retry of 3 s included
            before = load.stats()
            hup = time.time()
            server.proc.send_signal(signal.SIGHUP)
            deadline = hup + 120
            while time.time() < deadline:
                s = load.stats()
                if s["opened"] - before["opened"] >= before["open"] and s["open"] >= before["open"]:
                    break
                time.sleep(0.2)
            s = load.stats()
            res["reconnect_after_restart"] = {
                "streams": before["open"],
                "reconnected": s["open"],
                "seconds": round(s["last_connect"] - hup, 2),
                "client_retry_seconds": 3.0,
            }
            print("tidings reconnect", res["reconnect_after_restart"], flush=True)
            load.close()
            # polling (the seed) against the same server
            self.polling(server, load)
        finally:
            load.exit()
            server.stop()
        self.hold()

    def send_to_event(self, server: Server, load: Load, users: int, tabs: int) -> dict:
        """A user POSTs /send_message; the recipient's tabs receive the new unread count."""
        sender = httpx.Client(base_url=server.url, timeout=10)
        page = sender.get("/auth/login")
        token = page.text.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
        sender.post(
            "/auth/login", data={"csrf_token": token, "username": "benchsender", "password": PASSWORD}
        )
        load.take()
        sends = []
        for i in range(self.p["sends"]):
            user = self.users[i % users]
            t = time.time()
            r = sender.post(
                f"/send_message/{user['username']}", data={"csrf_token": token, "message": f"m{i}"}
            )
            assert r.status_code == 302, r.status_code
            sends.append((user["id"], t))
            time.sleep(0.02)
        time.sleep(1)
        counts = load.take()["counts"]
        latencies = []
        for uid, t in sends:
            mine = sorted(rt for u, _, rt in counts if u == uid and rt >= t)
            latencies += [rt - t for rt in mine[:tabs]]
        sender.close()
        self.samples[f"Tidings send→event ({load.stats()['open']} streams)"] = latencies
        return {
            "sends": len(sends),
            "tabs_per_user": tabs,
            "deliveries": len(latencies),
            "latency_ms": percentiles(latencies),
        }

    def polling(self, server: Server, load: Load) -> None:
        p = self.p
        n = p["polling_clients"]
        since = time.time()
        specs = [
            {"cookie": self.users[i]["cookie"], "path": f"/notifications?since={since}", "src": src(i)}
            for i in range(n)
        ]
        parts = [specs[i :: len(load.procs)] for i in range(len(load.procs))]
        c0 = server.counters()
        t0 = time.time()
        results = load.ask_all(
            [
                {"cmd": "poll", "specs": part, "interval": 10.0, "duration": p["polling_seconds"]}
                for part in parts
            ]
        )
        elapsed = time.time() - t0
        c1 = server.counters()
        lat = [x for r in results for x in r["latencies"]]
        requests = sum(r["requests"] for r in results)
        resp = percentiles(lat)
        # A notification waits on average half the interval for the next poll, at worst all of it.
        self.samples["Polling every 10 s (implied)"] = (
            [(i + 0.5) / len(lat) * 10.0 + lat[i] for i in range(len(lat))] if lat else []
        )
        self.results["polling"] = {
            "clients": n,
            "interval_s": 10.0,
            "seconds": round(elapsed, 1),
            "requests_per_s": round(requests / elapsed, 1),
            "errors": sum(r["errors"] for r in results),
            "sql_per_s": round((c1["sql_statements"] - c0["sql_statements"]) / elapsed, 1),
            "response_ms": resp,
            "implied_latency_ms": percentiles(self.samples["Polling every 10 s (implied)"]),
        }
        print("polling", self.results["polling"], flush=True)

    def hold(self) -> None:
        """(a) The most concurrent streams held for a while with no error."""
        target, seconds = self.p["hold"]
        per_worker = 16000
        workers = max(int(os.environ.get("WEB_CONCURRENCY", "2")), -(-target // per_worker))
        server = Server("wsgi:app", self.env, workers, self.tmp, "tidings-hold")
        procs = max(self.p["load_processes"], -(-target // 16000))
        load = Load(server.port, procs)
        load.same({"cmd": "config", "reconnect": False})
        base_rss = server.rss()
        try:
            users = max(1, target // 10)
            r = load.open(self.specs(target, users))
            time.sleep(seconds)
            s = load.stats()
            info = self.redis.info()
            self.results["tidings"]["held"] = {
                "target": target,
                "workers": workers,
                "load_processes": procs,
                "opened": r["opened"],
                "connect_errors": r["errors"],
                "open_after_hold": s["open"],
                "hold_seconds": seconds,
                "dropped": r["opened"] - s["open"],
                "connect_seconds": round(r["seconds"], 1),
                "redis_connected_clients": info["connected_clients"],
                "app_rss_per_stream_kb": round((server.rss() - base_rss) / max(1, s["open"]) / 1024, 2),
                "last_error": r["last_error"],
            }
            print("tidings held", self.results["tidings"]["held"], flush=True)
            load.close()
        finally:
            load.exit()
            server.stop()

    # -- Flask-SSE -----------------------------------------------------------------

    def flask_sse(self) -> None:
        """The peer on the same load: one set of streams, then the same publish runs and rate steps."""
        p, res = self.p, self.results["flask_sse"]
        server = self.server = Server(
            "bench.peers.flask_sse_app:app",
            self.env,
            int(os.environ.get("WEB_CONCURRENCY", "2")),
            self.tmp,
            "flask-sse",
        )
        load = Load(server.port, p["load_processes"])
        load.same({"cmd": "config", "reconnect": False})
        try:
            base_rss, base_redis = server.rss(), self.redis.info()
            streams = p["peer_streams"]
            users = streams // 10
            r = load.open(self.specs(streams, users, peer=True))
            # Its streams subscribe as the server works through the backlog: wait until they all have.
            deadline = time.time() + 120
            while self.redis.info()["connected_clients"] < r["opened"] and time.time() < deadline:
                time.sleep(0.5)
            time.sleep(2)
            info = self.redis.info()
            res["levels"] = [
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
            print("flask-sse level", res["levels"][-1], flush=True)
            res["publish_to_event"] = {}
            for n, rate in p["publish_loads"]:
                if n != streams:
                    continue
                r = self.publish_run(load, users, 10, rate, p["duration"], peer=True)
                self.samples[f"Flask-SSE publish→event ({streams} streams, {rate}/s)"] = r.pop("_samples")
                res["publish_to_event"][f"{streams}@{rate}"] = r
                print("flask-sse publish", streams, rate, r, flush=True)
            res["delivery_rate"] = self.rate_steps(load, users, 10, peer=True)
            print("flask-sse rate", res["delivery_rate"]["max_sustained_deliveries_per_s"], flush=True)
        finally:
            load.close()
            load.exit()
            server.stop()

    def floor(self) -> None:
        """RSS per idle stream of a bare WSGI generator (a greenlet per stream) under the same gunicorn."""
        streams = self.p["peer_streams"]
        server = Server(
            "bench.peers.minimal_app:app",
            self.env,
            int(os.environ.get("WEB_CONCURRENCY", "2")),
            self.tmp,
            "floor",
        )
        load = Load(server.port, self.p["load_processes"])
        load.same({"cmd": "config", "reconnect": False})
        try:
            base = server.rss()
            r = load.open(self.specs(streams, max(1, streams // 10)))
            time.sleep(2)
            self.results["floor"] = {
                "streams": streams,
                "opened": r["opened"],
                "app_rss_per_stream_kb": round((server.rss() - base) / max(1, r["opened"]) / 1024, 2),
            }
            print("floor", self.results["floor"], flush=True)
        finally:
            load.close()
            load.exit()
            server.stop()

    # -- output --------------------------------------------------------------------

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.results["ratios"] = ratios(self.results)
        (self.out / "results.json").write_text(json.dumps(self.results, indent=2))
        (self.out / "results.md").write_text(markdown(self.results))
        plot(self.samples, self.out / "latency.png")
        print(f"wrote {self.out}/results.md, results.json, latency.png", flush=True)

    def close(self) -> None:
        self.redis.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def create_users(db_url: str, n: int) -> list[dict]:
    """Bench users straight through the app's models: one password hash for all, signed session cookies."""
    from werkzeug.security import generate_password_hash

    from app import create_app
    from app.extensions import db
    from app.models import Login, User

    app = create_app({"SQLALCHEMY_DATABASE_URI": db_url, "SECRET_KEY": "bench-secret"})
    shared_hash = generate_password_hash(PASSWORD)
    with app.app_context():
        rows = [
            {"username": f"bench{i}", "email": f"bench{i}@example.com", "password_hash": shared_hash}
            for i in range(n)
        ]
        rows.append({"username": "benchsender", "email": "sender@example.com", "password_hash": shared_hash})
        db.session.execute(User.__table__.insert(), rows)
        db.session.commit()
        ids = dict(db.session.execute(db.select(User.username, User.id)).all())
        # One login per user: the cookie carries its token, as a real login's does.
        logins = [{"token": f"bench-login-{ids[f'bench{i}']}", "user_id": ids[f"bench{i}"]} for i in range(n)]
        db.session.execute(Login.__table__.insert(), logins)
        db.session.commit()
        serializer = app.session_interface.get_signing_serializer(app)
        users = []
        for i in range(n):
            uid = ids[f"bench{i}"]
            cookie = serializer.dumps({"_user_id": f"bench-login-{uid}", "_fresh": False})
            users.append({"id": uid, "username": f"bench{i}", "cookie": f"session={cookie}"})
        db.engine.dispose()
    return users


def machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def ratios(r: dict) -> dict:
    """Tidings / peer ratios on the measures both have."""
    out = {}
    t_levels = {lv["streams"]: lv for lv in r["tidings"].get("levels", [])}
    for lv in r["flask_sse"].get("levels", []):
        t = t_levels.get(lv["streams"])
        if t:
            out[f"app_rss_per_stream@{lv['streams']}"] = _ratio(
                t["app_rss_per_stream_kb"], lv["app_rss_per_stream_kb"]
            )
            out[f"redis_clients@{lv['streams']}"] = _ratio(
                t["redis_connected_clients"], lv["redis_connected_clients"]
            )
            out[f"redis_memory_per_stream@{lv['streams']}"] = _ratio(
                t["redis_used_memory_per_stream_b"], lv["redis_used_memory_per_stream_b"]
            )
    for key, fs in r["flask_sse"].get("publish_to_event", {}).items():
        t = r["tidings"].get("publish_to_event", {}).get(key)
        if t and "p99" in fs["latency_ms"] and "p99" in t["latency_ms"]:
            out[f"publish_p99@{key}"] = _ratio(t["latency_ms"]["p99"], fs["latency_ms"]["p99"])
    t_rate = r["tidings"].get("delivery_rate", {}).get("max_sustained_deliveries_per_s")
    f_rate = r["flask_sse"].get("delivery_rate", {}).get("max_sustained_deliveries_per_s")
    if t_rate is not None and f_rate:
        out["max_sustained_deliveries"] = _ratio(t_rate, f_rate)
    if r["polling"]:
        out["polling_requests_per_s_vs_idle_tidings"] = {
            "polling": r["polling"]["requests_per_s"],
            "tidings_idle": r["tidings"].get("idle", {}).get("http_requests_per_s"),
        }
    return out


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"# Tidings benchmark ({r['mode']})",
        "",
        f"Machine: {m['cores']} cores, {m['memory_gb']} GB, {m['system']}, "
        f"Python {m['python']}; {m['date']}.",
        "Load clients, Redis and gunicorn share these cores.",
        "",
    ]
    t = r["tidings"]
    lines += [
        "## Streams, memory and Redis connections",
        "",
        "| server | streams | opened | errors | app RSS / stream (KB) | Redis mem / stream (B) "
        "| Redis clients |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, key in (("Tidings", "tidings"), ("Flask-SSE", "flask_sse")):
        for lv in r[key].get("levels", []):
            lines.append(
                f"| {name} | {lv['streams']} | {lv['opened']} | {lv['errors']} | "
                f"{lv['app_rss_per_stream_kb']} | {lv['redis_used_memory_per_stream_b']} | "
                f"{lv['redis_connected_clients']} |"
            )
    if r.get("floor"):
        f = r["floor"]
        lines += [
            "",
            "Reference: a bare WSGI generator (one greenlet per stream, no Flask, no Redis) under the "
            f"same gunicorn settings costs {f['app_rss_per_stream_kb']} KB per idle stream "
            f"({f['opened']} streams). Tidings' open streams hold no greenlet, hence less.",
        ]
    if "held" in t:
        h = t["held"]
        lines += [
            "",
            f"Held: {h['open_after_hold']} of {h['target']} streams open after {h['hold_seconds']} s "
            f"({h['connect_errors']} connect errors, {h['dropped']} dropped; {h['workers']} workers, "
            f"{h['redis_connected_clients']} Redis clients).",
        ]
    lines += [
        "",
        "## Latency (ms)",
        "",
        "| path | load | n | p50 | p90 | p99 | max | lost |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for level, s in t.get("send_to_event", {}).items():
        lt = s["latency_ms"]
        lines.append(
            f"| Tidings send→event | {level} streams | {lt.get('n')} | {lt.get('p50')} | {lt.get('p90')} | "
            f"{lt.get('p99')} | {lt.get('max')} | |"
        )
    for name, key in (("Tidings", "tidings"), ("Flask-SSE", "flask_sse")):
        for load, s in r[key].get("publish_to_event", {}).items():
            lt = s["latency_ms"]
            lines.append(
                f"| {name} publish→event | {load.replace('@', ' streams @ ')} deliveries/s | {lt.get('n')} | "
                f"{lt.get('p50')} | {lt.get('p90')} | {lt.get('p99')} | {lt.get('max')} | {s['lost']} |"
            )
    if r["polling"]:
        pl = r["polling"]["implied_latency_ms"]
        lines.append(
            f"| Polling (implied) | {r['polling']['clients']} clients / 10 s | {pl.get('n')} | "
            f"{pl.get('p50')} | "
            f"{pl.get('p90')} | {pl.get('p99')} | {pl.get('max')} | |"
        )
    lines += ["", "## Delivery rate (p99 ≤ 100 ms, 0 lost)", ""]
    for name, key in (("Tidings", "tidings"), ("Flask-SSE", "flask_sse")):
        dr = r[key].get("delivery_rate")
        if dr:
            steps = ", ".join(
                f"{s['achieved_deliveries_per_s']}/s p99 {s['latency_ms'].get('p99')} ms lost {s['lost']}"
                for s in dr["steps"]
            )
            lines.append(
                f"- {name}: **{dr['max_sustained_deliveries_per_s']} deliveries/s** sustained ({steps})"
            )
    if "idle" in t:
        i = t["idle"]
        lines += [
            "",
            "## Idle cost",
            "",
            f"- Tidings, {i['streams']} idle streams: {i['sql_per_s']} SQL statements/s, "
            f"{i['http_requests_per_s']} HTTP requests/s (over {i['seconds']} s)",
        ]
    if r["polling"]:
        p = r["polling"]
        lines.append(
            f"- Seed polling, {p['clients']} clients every 10 s: {p['requests_per_s']} requests/s, "
            f"{p['sql_per_s']} SQL statements/s, response p50 {p['response_ms'].get('p50')} ms"
        )
    if "reconnect_after_restart" in t:
        rc = t["reconnect_after_restart"]
        lines += [
            "",
            "## Restart",
            "",
            f"All {rc['reconnected']} of {rc['streams']} streams back {rc['seconds']} s after "
            f"`kill -HUP` of the gunicorn master (clients wait the server's 3 s `retry:`).",
        ]
    lines += [
        "",
        "## Ratios (Tidings / peer)",
        "",
        "```",
        json.dumps(r.get("ratios", {}), indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def plot(samples: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for label, values in samples.items():
        if not values:
            continue
        ms = sorted(v * 1000 for v in values)
        ax.plot(ms, [(i + 1) / len(ms) for i in range(len(ms))], label=f"{label} (n={len(ms)})")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title("Notification latency: Tidings push vs Flask-SSE vs 10 s polling")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small run (≤ 2 minutes), as CI does")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    out = args.out or (ROOT / ("bench/results" if args.quick else "docs/benchmarks"))
    bench = Bench(args.quick, out)
    started = time.time()
    try:
        bench.tidings()
        bench.flask_sse()
        bench.floor()
    finally:
        bench.results["seconds"] = round(time.time() - started, 1)
        bench.write()
        bench.close()
    print(f"benchmark finished in {bench.results['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
