"""What every benchmark scenario stands on: servers, load clients, meters and the rig.

A *rig* is one run's private redis-server, SQLite database and bench users; a scenario
(bench/scenarios/) starts the servers and load clients it needs on it and returns what it
measured; bench/report.py writes the results. ``python -m bench.run --only <name>`` runs one
scenario alone; ``make faults`` (bench/faults.py) uses the same servers and users.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import redis

from harness.servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PASSWORD = "bench-password"

QUICK = {
    "streams_levels": [200, 1000],
    "connect_isolated": (1000, 3),  # streams opened per round, rounds
    "users": 100,  # tabs per user = streams / users
    "send_at": [1000],
    "sends": 30,
    "publish_loads": [(1000, 2000)],  # (streams, deliveries per second)
    "rate_steps": [2000, 10000],
    "rate_streams": 1000,  # the peer is measured at peer_streams, with the same publish loads
    "duration": 2.0,
    "idle_seconds": 5.0,
    "hold": (2000, 2.0),
    "polling_clients": 500,
    "polling_seconds": 8.0,
    "peer_streams": 1000,
    "restart_streams": 1000,
    "scaleout_streams": 1000,
    "scaleout_rates": [5000, 10000],
    "load_processes": 2,
}
FULL = {
    "streams_levels": [1000, 5000, 10000],
    "connect_isolated": (10000, 3),
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
    "restart_streams": 20000,
    "scaleout_streams": 10000,
    "scaleout_rates": [10000, 20000, 30000, 35000, 40000, 45000, 50000, 55000, 60000, 70000, 80000],
    "load_processes": 3,
}

Scenario = Callable[["Rig"], dict]
SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str) -> Callable[[Scenario], Scenario]:
    """Register a scenario under ``name`` (run order is registration order)."""

    def register(fn: Scenario) -> Scenario:
        SCENARIOS[name] = fn
        return fn

    return register


def percentiles(samples: list[float]) -> dict:
    """p50/p90/p99/max in milliseconds."""
    if not samples:
        return {"n": 0}
    s = sorted(samples)

    def pick(q: float) -> float:
        return round(s[min(len(s) - 1, int(q * len(s)))] * 1000, 2)

    return {"n": len(s), "p50": pick(0.5), "p90": pick(0.9), "p99": pick(0.99), "max": round(s[-1] * 1000, 2)}


def on_cores(cpus: set[int] | None):
    """A ``preexec_fn`` that keeps a child process (and its own children) on ``cpus``; None: anywhere."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


class Server:
    """gunicorn -c gunicorn.conf.py <app>, with per-worker counters in a metrics directory."""

    def __init__(
        self, app: str, env: dict, workers: int, tmp: Path, name: str, host=None, cpus: set[int] | None = None
    ) -> None:
        """``host``: a test host (harness/servers.py ``Network.host``) to run it on; ``cpus``: the
        cores the master and its workers may run on (all by default)."""
        self.port = free_port()
        self.ip = host.ip if host else "127.0.0.1"
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
        prefix = []
        if host is not None:
            prefix = ["ip", "netns", "exec", host.netns]
            self.env["BIND"] = f"{host.ip}:{self.port}"
        self.log_path = tmp / f"{name}.log"
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*prefix, BIN / "gunicorn", "-c", "gunicorn.conf.py", app],
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=on_cores(cpus),
        )
        self.url = f"http://{self.ip}:{self.port}"
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


def kernel_slab() -> int:
    """Bytes of kernel slab (sockets, their buffers' bookkeeping, dentries…) now, machine-wide."""
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return sum(int(fields[k].split()[0]) * 1024 for k in ("SReclaimable", "SUnreclaim"))


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

    def seconds(self) -> dict[str, float]:
        """CPU seconds each group used so far."""
        return {name: self._cpu(pids) - self.start[name] for name, pids in self.groups.items()}

    def cores_used(self, elapsed: float) -> dict[str, float]:
        """Cores' worth of CPU each group used over ``elapsed`` seconds."""
        return {
            name: round((self._cpu(pids) - self.start[name]) / elapsed, 2)
            for name, pids in self.groups.items()
        }


class Load:
    """Load-client processes, each holding part of the streams."""

    def __init__(
        self, port: int, processes: int, host: str = "127.0.0.1", cpus: set[int] | None = None
    ) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "bench.loadclient", host, str(port)],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=on_cores(cpus),
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
            out["last_error"] = r["last_error"] or out.get("last_error", "")
        return out

    def take(self) -> dict:
        lat, counts = [], []
        for r in self.same({"cmd": "take"}):
            lat += r["latencies"]
            counts += r["counts"]
        return {"latencies": lat, "counts": counts}

    def converged(self, expected: dict[int, int]) -> int:
        """How many open streams last saw their user's unread count at ``expected[user]``."""
        want = {str(k): v for k, v in expected.items()}
        return sum(r["converged"] for r in self.same({"cmd": "converged", "expected": want}))

    def close(self) -> None:
        self.same({"cmd": "close"})

    def exit(self) -> None:
        for proc in self.procs:
            proc.stdin.write('{"cmd": "exit"}\n')
            proc.stdin.flush()
            proc.wait(10)


def src(i: int) -> str:
    return f"127.0.0.{2 + i % 249}"


class Rig:
    """One run's Redis, database and users, and the measurements scenarios share."""

    def __init__(self, quick: bool) -> None:
        self.p = QUICK if quick else FULL
        self.quick = quick
        self.tmp = Path(tempfile.mkdtemp(prefix="tidings-bench-"))
        # What the scenarios measured, by scenario name; latency samples by series label.
        self.results: dict[str, dict] = {}
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
        n_users = max(
            self.p["users"],
            self.p["hold"][0] // 10,
            self.p["polling_clients"],
            self.p["restart_streams"] // 10,
        )
        self.users = create_users(self.db_url, n_users)

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
        self, server: Server, load: Load, users: int, tabs: int, rate: float, duration: float, peer: bool
    ) -> dict:
        """Publish bench events to ``users`` channels so that deliveries/s = rate; measure at the streams."""
        load.take()
        cpu = CpuMeter(
            {
                "app": server.worker_pids(),
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

    def rate_steps(self, server: Server, load: Load, users: int, tabs: int, peer: bool) -> dict:
        """Rising rates until one fails twice (a lone spike on a shared machine gets a second try)."""
        steps, best = [], 0
        for rate in self.p["rate_steps"]:
            for _attempt in range(2):
                r = self.publish_run(server, load, users, tabs, rate, self.p["duration"], peer)
                r.pop("_samples")
                steps.append(r)
                ok = r["lost"] == 0 and r["latency_ms"].get("p99", 1e9) <= 100
                if ok:
                    break
            if not ok:
                break
            best = max(best, r["achieved_deliveries_per_s"])
        return {"steps": steps, "max_sustained_deliveries_per_s": best}

    @contextlib.contextmanager
    def serving(
        self,
        name: str,
        app: str = "wsgi:app",
        workers: int | None = None,
        processes: int | None = None,
        env: dict | None = None,
        isolated: bool = False,
        **config,
    ) -> Iterator[tuple[Server, Load]]:
        """A server (``server``, with ``env`` over the rig's) and load-client processes for it
        (default: ``load_processes``, configured with ``config``, by default not reconnecting);
        all stopped afterwards. ``isolated``: the server runs on the last core alone, the load
        clients and Redis on the others, as they would on machines of their own."""
        server_cpus = load_cpus = None
        if isolated:
            cores = sorted(os.sched_getaffinity(0))
            server_cpus, load_cpus = set(cores[-1:]), set(cores[:-1])
        server = self.server(name, app, workers, env, cpus=server_cpus)
        load = Load(server.port, processes or self.p["load_processes"], cpus=load_cpus)
        redis_cpus = os.sched_getaffinity(self.redis.proc.pid)
        if load_cpus:
            os.sched_setaffinity(self.redis.proc.pid, load_cpus)
        try:
            load.same({"cmd": "config", **(config or {"reconnect": False})})
            yield server, load
        finally:
            if load_cpus:
                os.sched_setaffinity(self.redis.proc.pid, redis_cpus)
            load.close()
            load.exit()
            server.stop()

    def server(
        self,
        name: str,
        app: str = "wsgi:app",
        workers: int | None = None,
        env: dict | None = None,
        cpus: set[int] | None = None,
    ) -> Server:
        """gunicorn serving ``app`` against this rig's Redis and database (``env`` over the rig's)."""
        workers = workers or int(os.environ.get("WEB_CONCURRENCY", "2"))
        return Server(app, {**self.env, **(env or {})}, workers, self.tmp, name, cpus=cpus)

    def set_unread(self, user_ids: list[int], count: int) -> None:
        """Store and publish ``unread_message_count = count`` for each user, as a send would."""
        from app import create_app
        from app.extensions import db
        from app.notifications import tidings

        app = create_app(
            {
                "SQLALCHEMY_DATABASE_URI": self.db_url,
                "REDIS_URL": self.redis.url,
                "SECRET_KEY": "bench-secret",
            }
        )
        with app.app_context():
            for uid in user_ids:
                tidings.notify(uid, "unread_message_count", count)
                db.session.commit()
            db.engine.dispose()

    def close(self) -> None:
        self.redis.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


def create_users(db_url: str, n: int, prefix: str = "bench", secret: str = "bench-secret") -> list[dict]:
    """Bench users straight through the app's models: one password hash for all, signed session cookies."""
    from werkzeug.security import generate_password_hash

    from app import create_app
    from app.extensions import db
    from app.models import Login, User

    app = create_app({"SQLALCHEMY_DATABASE_URI": db_url, "SECRET_KEY": secret})
    shared_hash = generate_password_hash(PASSWORD)
    with app.app_context():
        rows = [
            {"username": f"{prefix}{i}", "email": f"{prefix}{i}@example.com", "password_hash": shared_hash}
            for i in range(n)
        ]
        rows.append(
            {
                "username": f"{prefix}sender",
                "email": f"{prefix}sender@example.com",
                "password_hash": shared_hash,
            }
        )
        db.session.execute(User.__table__.insert(), rows)
        db.session.commit()
        ids = dict(db.session.execute(db.select(User.username, User.id)).all())
        # One login per user: the cookie carries its token, as a real login's does.
        logins = [
            {"token": f"bench-login-{ids[f'{prefix}{i}']}", "user_id": ids[f"{prefix}{i}"]} for i in range(n)
        ]
        db.session.execute(Login.__table__.insert(), logins)
        db.session.commit()
        serializer = app.session_interface.get_signing_serializer(app)
        users = []
        for i in range(n):
            uid = ids[f"{prefix}{i}"]
            cookie = serializer.dumps({"_user_id": f"bench-login-{uid}", "_fresh": False})
            users.append({"id": uid, "username": f"{prefix}{i}", "cookie": f"session={cookie}"})
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
