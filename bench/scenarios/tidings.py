"""Tidings' own scenarios: streams and their cost, latency, delivery rate, restart, polling, hold."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

from bench.harness import PASSWORD, CpuMeter, Load, Rig, Server, kernel_slab, percentiles, scenario, src
from harness.clients import WebUser, csrf_token


@scenario("streams")
def streams(rig: Rig) -> dict:
    """(a–c) memory, kernel memory, Redis connections and connect CPU at rising numbers of
    streams; (d) send→event at some of them; (f) the idle cost at the largest."""
    p = rig.p
    with rig.serving("tidings-streams") as (server, load):
        out: dict = {}
        base_rss, base_redis, base_slab = server.rss(), rig.redis.info(), kernel_slab()
        out["baseline"] = {"app_rss": base_rss, **base_redis}
        levels = []
        for level in p["streams_levels"]:
            users = max(1, min(p["users"], level // 10))
            load.close()
            slab_before = kernel_slab()
            cpu = CpuMeter({"app": server.worker_pids()})
            started = time.time()
            r = load.open(rig.specs(level, users))
            connect_cpu = cpu.cores_used(time.time() - started)["app"] * (time.time() - started)
            time.sleep(2)
            info, rss, slab = rig.redis.info(), server.rss(), kernel_slab()
            opened = max(1, r["opened"])
            levels.append(
                {
                    "streams": level,
                    "users": users,
                    "opened": r["opened"],
                    "errors": r["errors"],
                    "connect_seconds": round(r["seconds"], 2),
                    "connect_cpu_ms_per_stream": round(connect_cpu / opened * 1000, 3),
                    "app_rss_per_stream_kb": round((rss - base_rss) / opened / 1024, 2),
                    "kernel_slab_per_stream_kb": round((slab - slab_before) / opened / 1024, 2),
                    "kernel_slab_since_baseline_per_stream_kb": round((slab - base_slab) / opened / 1024, 2),
                    "redis_used_memory_per_stream_b": round(
                        (info["used_memory"] - base_redis["used_memory"]) / opened, 1
                    ),
                    "redis_connected_clients": info["connected_clients"],
                }
            )
            print("tidings level", levels[-1], flush=True)
            if level in p["send_at"]:
                out.setdefault("send_to_event", {})[str(level)] = send_to_event(
                    rig, server, load, users, level // users
                )
        out["levels"] = levels
        c0, watch = server.counters(), PresenceWatch(rig)
        time.sleep(p["idle_seconds"])
        c1, presence = server.counters(), watch.stop()
        out["idle"] = {
            "streams": levels[-1]["opened"],
            "seconds": p["idle_seconds"],
            "sql_per_s": round((c1["sql_statements"] - c0["sql_statements"]) / p["idle_seconds"], 3),
            "http_requests_per_s": round((c1["http_requests"] - c0["http_requests"]) / p["idle_seconds"], 3),
            # What presence costs Redis (flask_tidings/presence.py): its commands per second, and
            # the members they write, as Redis' MONITOR saw them.
            "redis_presence_commands_per_s": round(presence[0] / p["idle_seconds"], 2),
            "redis_presence_members_per_s": round(presence[1] / p["idle_seconds"], 1),
        }
        print("tidings idle", out["idle"], flush=True)
    out["connect_isolated"] = connect_isolated(rig)
    return out


class PresenceWatch:
    """Counts, through Redis' MONITOR, the commands on presence's keys and the members written."""

    def __init__(self, rig: Rig) -> None:
        import redis

        self.commands = self.members = 0
        self._monitor = redis.Redis(port=rig.redis.port).monitor().__enter__()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for command in self._monitor.listen():
            if self._stopping.is_set():
                return
            words = command["command"].split()
            if len(words) > 1 and words[1].startswith("tidings:presence:"):
                self.commands += 1
                if words[0].upper() == "ZADD":
                    self.members += (len(words) - 3) // 2  # ZADD key GT score member …

    def stop(self) -> tuple[int, int]:
        self._stopping.set()
        counts = (self.commands, self.members)
        self._thread.join(timeout=15)  # returns with the next command Redis sees
        return counts


def connect_isolated(rig: Rig) -> dict:
    """(a') connect CPU with the server on a core of its own: one worker on the last core, the
    load clients and Redis on the others, as on machines of their own. Sharing the cores
    with them makes every process slower (caches, switches), so the figure at the levels
    above varies with the load clients' appetite; this one is the server's own cost."""
    n, rounds = rig.p["connect_isolated"]
    per_stream = []
    with rig.serving("tidings-connect", workers=1, isolated=True) as (server, load):
        for _ in range(rounds):
            load.close()
            deadline = time.time() + 30
            while server.counters()["streams"] and time.time() < deadline:  # the last round's closes
                time.sleep(0.2)
            cpu = CpuMeter({"app": server.worker_pids()})
            r = load.open(rig.specs(n, max(1, min(len(rig.users), n // 10))))
            per_stream.append(round(cpu.seconds()["app"] / max(1, r["opened"]) * 1000, 3))
            if r["errors"]:
                raise RuntimeError(f"isolated connects: {r['errors']} errors ({r['last_error']})")
    out = {"streams": n, "rounds_ms": per_stream, "median_ms": sorted(per_stream)[len(per_stream) // 2]}
    print("tidings connect isolated", out, flush=True)
    return out


def send_to_event(rig: Rig, server: Server, load: Load, users: int, tabs: int) -> dict:
    """A user POSTs /send_message; the recipient's tabs receive the new unread count."""
    sender = WebUser(server.url, "benchsender", PASSWORD).login()
    token = csrf_token(sender.http.get("/").text)  # the login's own form token (it changes at login)
    load.take()
    sends = []
    for i in range(rig.p["sends"]):
        user = rig.users[i % users]
        t = time.time()
        r = sender.http.post(
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
    rig.samples[f"Tidings send→event ({load.stats()['open']} streams)"] = latencies
    return {
        "sends": len(sends),
        "tabs_per_user": tabs,
        "deliveries": len(latencies),
        "latency_ms": percentiles(latencies),
    }


@scenario("publish")
def publish(rig: Rig) -> dict:
    """(d) publish→event: bench events PUBLISHed at a steady rate, latency at the streams."""
    p = rig.p
    with rig.serving("tidings-publish") as (server, load):
        out: dict = {}
        for n, rate in p["publish_loads"]:
            users = n // 10
            load.close()
            load.open(rig.specs(n, users))
            time.sleep(1)
            r = rig.publish_run(server, load, users, 10, rate, p["duration"], peer=False)
            rig.samples[f"Tidings publish→event ({n} streams, {rate}/s)"] = r.pop("_samples")
            out[f"{n}@{rate}"] = r
            print("tidings publish", n, rate, r, flush=True)
    return out


@scenario("rate")
def rate(rig: Rig) -> dict:
    """(e) the highest delivery rate with p99 ≤ 100 ms and nothing lost."""
    p = rig.p
    with rig.serving("tidings-rate") as (server, load):
        users = p["rate_streams"] // 10
        load.open(rig.specs(p["rate_streams"], users))
        time.sleep(1)
        out = rig.rate_steps(server, load, users, 10, peer=False)
        print("tidings rate", out["max_sustained_deliveries_per_s"], flush=True)
    return out


@scenario("restart")
def restart(rig: Rig) -> dict:
    """(g) a deploy: ``kill -HUP`` of the master under ``restart_streams`` streams on 2 workers.

    The old workers carry their streams to the new ones (flask_tidings/succession.py): no stream should
    close. Counts are stored and published while the workers change, then once more for every
    user: every stream must end at the last (none lost).
    """
    return _deploy(rig, carry=True)


@scenario("restart_drain")
def restart_drain(rig: Rig) -> dict:
    """(g) the same deploy with carrying off (``SSE_HANDOFF_SECONDS=0``): every stream is closed
    with a jittered ``retry:`` and reconnects, as an EventSource does, replaying from its
    Last-Event-ID."""
    return _deploy(rig, carry=False)


CARRIED_LINE = re.compile(r"carried (\d+) streams to the workers succeeding this one in ([\d.]+) s")


def _deploy(rig: Rig, carry: bool) -> dict:
    p = rig.p
    n = p["restart_streams"]
    users = n // 10
    per_load = 16000  # each load process stays under the descriptor limit
    env = None if carry else {"SSE_HANDOFF_SECONDS": "0"}
    name = "tidings-restart" if carry else "tidings-restart-drain"
    processes = max(p["load_processes"], -(-n // per_load))
    with rig.serving(name, workers=2, processes=processes, env=env, honour_retry=True) as (server, load):
        ids = [u["id"] for u in rig.users[:users]]
        # What a worker's boot costs, to take out of the new workers' CPU below.
        boot_cpu = CpuMeter._cpu(server.worker_pids()) / 2
        r = load.open(rig.specs(n, users))
        rig.set_unread(ids, 1)
        wait_until(lambda: load.converged(dict.fromkeys(ids, 1)) >= r["opened"], 60)
        before = load.stats()
        log_before = server.log_path.stat().st_size
        old_workers = set(server.worker_pids())
        gone: list[float] = []

        def watch() -> None:
            while set(server.worker_pids()) & old_workers and time.time() - hup < 60:
                time.sleep(0.05)
            gone.append(time.time())

        hup = time.time()
        server.proc.send_signal(signal.SIGHUP)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        # Counts stored and published, a tenth of the users at a time, while the old workers
        # carry (or drain) their streams and the new ones boot; then once more for every user
        # through the new workers. Every stream must end at the last: none lost.
        count, step = 1, max(1, len(ids) // 10)
        while not gone:
            count += 1
            start = (count * step) % len(ids)
            rig.set_unread(ids[start : start + step], count)
        watcher.join()
        count += 1
        rig.set_unread(ids, count)
        stored = time.time()
        back = wait_until(
            lambda: (
                (s := load.stats())["open"] >= before["open"]
                and (carry or s["opened"] - before["opened"] >= before["open"])
            ),
            120,
        )
        converged = wait_until(lambda: load.converged(dict.fromkeys(ids, count)) >= before["open"], 60)
        s = load.stats()
        got = load.converged(dict.fromkeys(ids, count))
        reconnects = s["opened"] - before["opened"]
        # The new workers' CPU since they booted: every reconnect or adoption, replay and the count.
        app_cpu = CpuMeter._cpu(server.worker_pids()) - 2 * boot_cpu
        with open(server.log_path, "rb") as f:
            f.seek(log_before)
            carried = [(int(k), float(t)) for k, t in CARRIED_LINE.findall(f.read().decode(errors="replace"))]
        moved = sum(k for k, _ in carried) if carry else reconnects
        out = {
            "streams": before["open"],
            "workers": 2,
            "carried": sum(k for k, _ in carried),
            "carry_seconds": max((t for _, t in carried), default=None),
            "drain_window_ms": int(rig.env.get("SSE_DRAIN_RETRY_MS", 5000)),
            "reconnects": reconnects,
            "reconnected": s["open"],
            # Drained: when the last stream reconnected. Carried: none closed, so none came back.
            "all_back_seconds": round(s["last_connect"] - hup, 2) if back and not carry else None,
            "old_workers_gone_seconds": round(gone[0] - hup, 2),
            "rounds_stored": count - 1,
            "last_stored_seconds": round(stored - hup, 2),
            "converged_seconds": round(converged - hup, 2) if converged else None,
            "lost": before["open"] - got,
            "connect_errors": s["errors"] - before["errors"],
            "last_connect_error": s["last_error"],
            "new_workers_cpu_ms_per_stream": round(app_cpu / max(1, moved) * 1000, 3),
        }
        print("tidings restart", "carried" if carry else "drained", out, flush=True)
    return out


def wait_until(check, timeout: float) -> float | None:
    """Poll ``check`` every 0.1 s; the time it first held, or None after ``timeout``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return time.time()
        time.sleep(0.1)
    return None


@scenario("polling")
def polling(rig: Rig) -> dict:
    """The seed's client against the same server: GET /notifications?since= every 10 s."""
    p = rig.p
    with rig.serving("tidings-polling") as (server, load):
        n = p["polling_clients"]
        since = time.time()
        specs = [
            {"cookie": rig.users[i]["cookie"], "path": f"/notifications?since={since}", "src": src(i)}
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
    # A notification waits on average half the interval for the next poll, at worst all of it.
    implied = [(i + 0.5) / len(lat) * 10.0 + lat[i] for i in range(len(lat))] if lat else []
    rig.samples["Polling every 10 s (implied)"] = implied
    out = {
        "clients": n,
        "interval_s": 10.0,
        "seconds": round(elapsed, 1),
        "requests_per_s": round(requests / elapsed, 1),
        "errors": sum(r["errors"] for r in results),
        "sql_per_s": round((c1["sql_statements"] - c0["sql_statements"]) / elapsed, 1),
        "response_ms": percentiles(lat),
        "implied_latency_ms": percentiles(implied),
    }
    print("polling", out, flush=True)
    return out


@scenario("hold")
def hold(rig: Rig) -> dict:
    """(a) The most concurrent streams held for a while with no error."""
    target, seconds = rig.p["hold"]
    per_worker = 16000
    workers = max(int(os.environ.get("WEB_CONCURRENCY", "2")), -(-target // per_worker))
    procs = max(rig.p["load_processes"], -(-target // 16000))
    with rig.serving("tidings-hold", workers=workers, processes=procs) as (server, load):
        base_rss = server.rss()
        r = load.open(rig.specs(target, max(1, target // 10)))
        time.sleep(seconds)
        s = load.stats()
        info = rig.redis.info()
        out = {
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
        print("tidings held", out, flush=True)
    return out
