"""The fault matrix: ``python -m bench.faults [--quick] [--db sqlite,postgresql] [--only NAME,…]``.

``make faults`` runs every scenario on SQLite and on PostgreSQL and writes docs/reliability.md;
``make faults-quick`` (CI) runs a shorter version into bench/results/ and exits 1 when any row
lost, duplicated, reordered or crossed a notification: each fault once, on PostgreSQL, and the
rows that test the database itself (transactions, locks) on SQLite too.

Each scenario starts real processes: a private redis-server, gunicorn with Tidings' worker
class on SQLite or on a private PostgreSQL server (so it may be restarted), 10 users with two
EventSource-like tabs each (harness/clients.py ``Tab``: they honour ``retry:`` and resume with
``Last-Event-ID``), and senders posting the real send form. While the messages flow, the fault
strikes; then the traffic stops and every tab must show its user's true unread count, the
number of messages the database holds for them. Per connection, an event id seen twice is a
duplicate and an id lower than the one before is out of order; a ``new_message`` whose text
names another recipient is cross-user.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
import sqlalchemy as sa

from bench.harness import ROOT, Load, create_users, machine, percentiles, src
from harness.clients import Tab, WebUser, csrf_token, registered
from harness.servers import LiveServer, PostgresServer, RedisServer, migrate, wait_until

RECIPIENTS = 10
TABS_PER_USER = 2
SEND_INTERVAL = 0.05  # one send every 50 ms in all
MARK = re.compile(r"to:(\w+):")


@dataclass
class Timing:
    """How long the traffic runs around a fault, and the long outage."""

    before: float
    after: float
    outage: float
    big_deploy_streams: int


FULL = Timing(before=3.0, after=4.0, outage=30.0, big_deploy_streams=20000)
QUICK = Timing(before=1.5, after=2.0, outage=5.0, big_deploy_streams=0)


@dataclass
class Run:
    """One scenario's traffic and what the tabs saw."""

    tabs: list[Tab]
    sends: list[tuple[float, str, bool]] = field(default_factory=list)  # (started, recipient, ok)
    stop: threading.Event = field(default_factory=threading.Event)
    failures: dict[str, int] = field(default_factory=dict)  # failed sends by status or error
    note: str = ""


class Site:
    """A database, a Redis and a gunicorn for the scenarios, with registered users."""

    def __init__(self, db: str, tmp: Path) -> None:
        self.db, self.tmp = db, tmp
        self.redis = RedisServer(tmp).start()
        self.pg = None
        if db == "postgresql":
            pg_dir = tmp / "pg"
            pg_dir.mkdir()
            os.chmod(tmp, 0o755)
            self.pg = PostgresServer(pg_dir).start()
            url = self.pg.url
        else:
            url = f"sqlite:///{tmp / 'tidings.db'}"
        self.env = {
            "DATABASE_URL": url,
            "REDIS_URL": self.redis.url,
            "SECRET_KEY": "faults-secret",
            "WEB_CONCURRENCY": "2",
            "WORKER_CONNECTIONS": "25000",
            "EXPORT_DIR": str(tmp / "exports"),
            # Idle tabs hear from the server every 2 s, so a tab's 10 s read timeout means a dead link.
            "SSE_HEARTBEAT_SECONDS": "2",
            # Limits stay on, as in production, with room for this traffic from one address.
            "SEND_RATE": "100000 per minute",
            "STREAM_RATE": "100000 per minute",
            "LOGIN_RATE_PER_ADDRESS": "100000 per minute",
            "REGISTER_RATE": "100000 per hour",
        }
        migrate({**os.environ, **self.env})
        self.server: LiveServer | None = None
        self.start_server()
        self.recipients = [self.register(f"reader{i}") for i in range(RECIPIENTS)]
        self.senders = [self.register(f"sender{i}") for i in range(4)]
        self.engine = sa.create_engine(url, pool_pre_ping=True)

    def register(self, name: str) -> WebUser:
        return registered(self.server.url, name)

    def start_server(self) -> None:
        self.server = LiveServer(self.env, self.tmp / f"gunicorn-{time.time():.0f}.log").start()
        for user in getattr(self, "recipients", []) + getattr(self, "senders", []):
            user.base_url = self.server.url
            user.http.base_url = self.server.url

    def truth(self) -> dict[str, int]:
        """Messages each recipient holds (nobody reads during a run): their true unread count."""
        return self._by_username(
            'SELECT u.username, count(m.id) FROM "user" u '
            "LEFT JOIN message m ON m.recipient_id = u.id GROUP BY u.username"
        )

    def stored_counts(self) -> dict[str, int]:
        """The unread count each recipient's store holds (what a fresh tab is shown)."""
        return self._by_username(
            'SELECT u.username, n.payload_json FROM notification n JOIN "user" u ON u.id = n.user_id '
            "WHERE n.name = 'unread_message_count'"
        )

    def _by_username(self, sql: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {name: int(value) for name, value in conn.execute(sa.text(sql)).all()}

    def warnings_since(self, offset: int) -> int:
        """Lines at WARNING or above the server logged past ``offset``."""
        text = self.server.log()[offset:]
        return sum(1 for line in text.splitlines() if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line))

    def close(self) -> None:
        if self.server:
            self.server.stop()
        self.engine.dispose()
        self.redis.kill()
        if self.pg:
            self.pg.remove()


# -- the faults ------------------------------------------------------------------------------

Fault = Callable[[Site, Run, Timing], None]


def no_fault(site: Site, run: Run, t: Timing) -> None:
    time.sleep(2.0)


def client_drops(site: Site, run: Run, t: Timing) -> None:
    """100 connections cut under the tabs (each cut tab reconnects after the server's retry:)."""
    drops = 0
    deadline = time.monotonic() + 60
    while drops < 100 and time.monotonic() < deadline:
        live = [tab for tab in run.tabs if tab.open]
        if live:
            random.choice(live).drop()
            drops += 1
        time.sleep(0.05)
    run.note = f"{drops} connections cut"


def redis_kill_restart(site: Site, run: Run, t: Timing) -> None:
    site.redis.kill()
    site.redis.start()


def redis_down(site: Site, run: Run, t: Timing) -> None:
    site.redis.kill()
    time.sleep(t.outage)
    site.redis.start()
    run.note = f"down {t.outage:g} s"


def worker_kill(site: Site, run: Run, t: Timing) -> None:
    os.kill(random.choice(site.server.workers()).pid, signal.SIGKILL)


def hup(site: Site, run: Run, t: Timing) -> None:
    old = {w.pid for w in site.server.workers()}
    site.server.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: not old & {w.pid for w in site.server.workers()}, 30, "the old workers to exit")


def slow_consumer(site: Site, run: Run, t: Timing) -> None:
    slow = run.tabs[:2]
    for tab in slow:
        tab.paused.set()
    time.sleep(5)
    for tab in slow:
        tab.paused.clear()
    run.note = "2 tabs stop reading for 5 s"


def pg_restart(site: Site, run: Run, t: Timing) -> None:
    site.pg.restart()


def pubsub_buffer_limit(site: Site, run: Run, t: Timing) -> None:
    """Redis drops the hub for exceeding ``client-output-buffer-limit pubsub``: a burst of
    operator announcements (not stored) far above a small limit."""
    client = redis.Redis(port=site.redis.port)
    offset = len(site.server.log())
    client.config_set("client-output-buffer-limit", "pubsub 64kb 32kb 1")
    ids = [u["id"] for u in user_rows(site)]
    body = '{"name": "announcement", "data": "%s"}' % ("x" * 2000)
    pipe = client.pipeline(transaction=False)
    for i in range(4000):
        pipe.publish(f"notifications:{ids[i % len(ids)]}", body)
    pipe.execute()
    wait_until(
        lambda: "reach Redis from the notification hub again" in site.server.log()[offset:],
        30,
        "the hub back",
    )
    client.config_set("client-output-buffer-limit", "pubsub 32mb 8mb 60")
    drops = site.server.log()[offset:].count("could not reach Redis from the notification hub")
    run.note = f"Redis dropped the hub {drops} time(s)"


def user_rows(site: Site) -> list[dict]:
    with site.engine.connect() as conn:
        rows = conn.execute(sa.text('SELECT id, username FROM "user"')).all()
    names = {u.username for u in site.recipients}
    return [{"id": i, "username": n} for i, n in rows if n in names]


def worker_kill_in_flight(site: Site, run: Run, t: Timing) -> None:
    """kill -9 of a worker while four senders post at once: a send commits or fails whole."""
    time.sleep(0.5)
    os.kill(random.choice(site.server.workers()).pid, signal.SIGKILL)


def big_deploy(site: Site, run: Run, t: Timing) -> None:
    """HUP while ``big_deploy_streams`` more streams (load clients) are open beside the tabs."""
    hup(site, run, t)


@dataclass
class Scenario:
    name: str
    fault: Fault
    senders: int = 1
    one_recipient: bool = False
    databases: tuple[str, ...] = ("sqlite", "postgresql")
    full_only: bool = False
    # Whether the database's own behaviour is under test (transactions, locks). The quick matrix
    # (CI) runs each other fault once, on PostgreSQL: Redis, a worker or a client fails the same
    # way over either database.
    per_database: bool = False


SCENARIOS = [
    Scenario("no fault", no_fault, per_database=True),
    Scenario("client drops ×100", client_drops),
    Scenario("Redis kill -9 + restart", redis_kill_restart),
    Scenario("Redis down", redis_down),
    Scenario("worker kill -9", worker_kill),
    Scenario("kill -HUP (deploy)", hup),
    Scenario("slow consumer", slow_consumer),
    Scenario("PostgreSQL restart", pg_restart, databases=("postgresql",)),
    Scenario("Redis drops the hub (pubsub buffer limit)", pubsub_buffer_limit),
    Scenario("worker kill -9, 4 sends in flight", worker_kill_in_flight, senders=4, per_database=True),
    Scenario("4 concurrent senders to one user", no_fault, senders=4, one_recipient=True, per_database=True),
    Scenario("deploy under 20,000 streams", big_deploy, full_only=True),
]


# -- running one ----------------------------------------------------------------------------


def send_loop(site: Site, run: Run, sender: WebUser, recipients: list[WebUser], interval: float) -> None:
    n = 0
    while not run.stop.is_set():
        started = time.monotonic()
        to = recipients[n % len(recipients)]
        try:
            path = f"/send_message/{to.username}"
            page = sender.http.get(f"/messages/{to.username}")
            status = page.status_code
            if status == 200:
                form = {"csrf_token": csrf_token(page.text), "message": f"to:{to.username}:{n}"}
                status = sender.http.post(path, data=form).status_code
        except httpx.HTTPError as exc:  # a killed worker's connection
            status = type(exc).__name__
        ok = status == 302
        run.sends.append((started, to.username, ok))
        if not ok:
            run.failures[str(status)] = run.failures.get(str(status), 0) + 1
        n += 1
        time.sleep(max(0.0, interval - (time.monotonic() - started)))


def runs_quick(sc: Scenario, db: str) -> bool:
    """Whether the quick matrix runs ``sc`` on ``db``: each fault once, and again per database
    where the database is under test."""
    return not sc.full_only and (sc.per_database or db == "postgresql")


def run_scenario(site: Site, sc: Scenario, t: Timing) -> dict:
    if site.server.proc.poll() is not None or len(site.server.workers()) < 2:
        site.start_server()
    log_offset = len(site.server.log())
    stop_tabs = threading.Event()
    tabs = [Tab(u, stop_tabs).start() for u in site.recipients for _ in range(TABS_PER_USER)]
    run = Run(tabs)
    load = None
    try:
        wait_until(lambda: all(tab.open for tab in tabs), 30, "every tab connected")
        if sc.fault is big_deploy:
            load = open_load(site, t.big_deploy_streams)
            run.note = f"{load.stats()['open']} load-client streams beside the tabs"
        base = site.truth()
        recipients = site.recipients[:1] if sc.one_recipient else site.recipients
        threads = [
            threading.Thread(
                target=send_loop, args=(site, run, s, recipients, SEND_INTERVAL * sc.senders), daemon=True
            )
            for s in site.senders[: sc.senders]
        ]
        for th in threads:
            th.start()
        time.sleep(t.before)
        fault_at = time.monotonic()
        sc.fault(site, run, t)
        fault_seconds = time.monotonic() - fault_at
        time.sleep(t.after)
        run.stop.set()
        for th in threads:
            th.join(15)
        stopped = time.monotonic()
        truth = site.truth()
        converged_at = wait_for_truth(tabs, truth, 90)
        if load is not None:
            run.note += f"; all back: {load.stats()['open']}"
        return measure(site, sc, run, base, truth, converged_at, stopped, fault_seconds, log_offset)
    finally:
        if load is not None:
            load.close()
            load.exit()
        stop_tabs.set()
        for tab in tabs:
            tab.close()
        for tab in tabs:
            tab.thread.join(15)


def open_load(site: Site, streams: int) -> Load:
    users = create_users(
        site.env["DATABASE_URL"], streams // 10, f"load{time.time():.0f}x", site.env["SECRET_KEY"]
    )
    load = Load(site.server.port, max(2, -(-streams // 16000)))
    load.same({"cmd": "config", "honour_retry": True})
    specs = [
        {
            "cookie": users[i % len(users)]["cookie"],
            "user_id": users[i % len(users)]["id"],
            "path": "/stream",
            "src": src(i),
        }
        for i in range(streams)
    ]
    load.open(specs)
    return load


def wait_for_truth(tabs: list[Tab], truth: dict[str, int], timeout: float) -> float | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all((tab.count or 0) == truth[tab.user.username] for tab in tabs):
            return time.monotonic()
        time.sleep(0.05)
    return None


def measure(site, sc, run, base, truth, converged_at, stopped, fault_seconds, log_offset) -> dict:
    tabs = run.tabs
    dup = disorder = 0
    for tab in tabs:
        for conn in tab.connections:
            dup += len(conn.ids) - len(set(conn.ids))
            # Ids grow per key (the store keeps the latest per kind): a lower one after a higher
            # one of the same key would be a stale badge. Across keys the order may differ.
            newest: dict[str, int] = {}
            for key, id_ in conn.keys:
                disorder += id_ < newest.get(key, 0)
                newest[key] = max(id_, newest.get(key, 0))
    cross = sum(
        1
        for tab in tabs
        for p in tab.previews
        if (m := MARK.search(str(p.get("preview", "")))) and m.group(1) != tab.user.username
    )
    # Badge delay: the j-th acknowledged send to a user, to the first time each tab showed base+j.
    delays = []
    by_user: dict[str, list[float]] = {}
    for started, to, ok in sorted(run.sends):
        if ok:
            by_user.setdefault(to, []).append(started)
    for tab in tabs:
        name = tab.user.username
        for j, started in enumerate(by_user.get(name, []), 1):
            shown = next(
                (when for when, n in tab.counts if n >= base.get(name, 0) + j and when >= started), None
            )
            if shown is not None:
                delays.append(shown - started)
    stored = site.stored_counts()
    half_written = sum(1 for name, n in truth.items() if n and stored.get(name) != n)
    ok = sum(1 for *_, good in run.sends if good)
    committed = sum(truth.values()) - sum(base.values())
    converged = sum(1 for tab in tabs if (tab.count or 0) == truth[tab.user.username])
    return {
        "scenario": sc.name,
        "database": site.db,
        "sends_ok": ok,
        "sends_attempted": len(run.sends),
        "committed": committed,
        "tabs": len(tabs),
        "tabs_converged": converged,
        "lost": len(tabs) - converged,
        "converge_seconds": round(converged_at - stopped, 2) if converged_at else None,
        "fault_seconds": round(fault_seconds, 1),
        "duplicates": dup,
        "out_of_order": disorder,
        "cross_user": cross,
        "half_written": half_written,
        "reconnects": sum(max(0, len(tab.connections) - 1) for tab in tabs),
        "badge_delay_ms": percentiles(delays),
        "warning_lines": site.warnings_since(log_offset),
        "note": "; ".join(
            [run.note] * bool(run.note)
            + [f"failed sends: {', '.join(f'{n}× {k}' for k, n in run.failures.items())}"]
            * bool(run.failures)
        ),
    }


# -- the report -----------------------------------------------------------------------------


def failed(row: dict) -> bool:
    return bool(
        row["lost"] or row["duplicates"] or row["out_of_order"] or row["cross_user"] or row["half_written"]
    )


def markdown(rows: list[dict], command: str, seconds: float) -> str:
    m = machine()
    lines = [
        "# Reliability: the fault matrix",
        "",
        f"`{command}` on {m['cores']} cores, {m['memory_gb']} GB, {m['system']}, Python {m['python']}; "
        f"{m['date']}; {seconds:.0f} s in all. bench/faults.py says how each row is made.",
        "",
        f"Each row: {RECIPIENTS} users × {TABS_PER_USER} EventSource-like tabs (they honour `retry:` and "
        f"resume with `Last-Event-ID`), one send every {SEND_INTERVAL * 1000:.0f} ms through the real "
        "form, the fault during the traffic, then every tab must show its user's true unread count (the "
        "messages the database holds). *Lost* = tabs that never got there; *duplicates* and *out of "
        "order* are counted per connection by event id (out of order: an id below an earlier one of the same "
        "kind, i.e. a stale badge; kinds interleave freely); *cross-user* = a `new_message` naming another "
        "recipient; *half-written* = users whose stored count is not their messages. Sends that failed "
        "(a killed worker's, a restarting database's) were answered with an error and either committed "
        "whole (*committed* counts them) or not at all. *Converge* is the time from the last send to the "
        "last tab at the truth; the badge delay runs from a send's POST to each tab showing it.",
        "",
        "| database | scenario | sends ok / attempted | committed | tabs at the truth | converge (s) "
        "| dup | out of order | cross-user | half-written | reconnects | badge delay p50 / p99 / max (ms) "
        "| warning lines | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = r["badge_delay_ms"]
        lines.append(
            f"| {r['database']} | {r['scenario']} | {r['sends_ok']} / {r['sends_attempted']} "
            f"| {r['committed']} | {r['tabs_converged']} / {r['tabs']} | {r['converge_seconds']} "
            f"| {r['duplicates']} "
            f"| {r['out_of_order']} | {r['cross_user']} | {r['half_written']} | {r['reconnects']} "
            f"| {d.get('p50')} / {d.get('p99')} / {d.get('max')} | {r['warning_lines']} | {r['note']} |"
        )
    bad = [r for r in rows if failed(r)]
    lines += [
        "",
        f"**{len(rows) - len(bad)} of {len(rows)} rows at 0 lost, 0 duplicated, 0 out of order, "
        "0 cross-user, 0 half-written.**",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short outages, no 20,000-stream deploy (CI)")
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--only", default="", help="comma-separated scenario names (substrings)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    timing = QUICK if args.quick else FULL
    out = ROOT / (args.out or ("bench/results/reliability.md" if args.quick else "docs/reliability.md"))
    wanted = [w for w in args.only.split(",") if w]
    started = time.time()
    rows = []
    for db in args.db.split(","):
        tmp = Path(tempfile.mkdtemp(prefix=f"tidings-faults-{db}-"))
        site = Site(db, tmp)
        try:
            for sc in SCENARIOS:
                if db not in sc.databases or (args.quick and not runs_quick(sc, db)):
                    continue
                if wanted and not any(w in sc.name for w in wanted):
                    continue
                row = run_scenario(site, sc, timing)
                rows.append(row)
                print(row, flush=True)
        finally:
            site.close()
    command = "make faults-quick" if args.quick else "make faults"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(rows, command, time.time() - started))
    print(f"wrote {out}", flush=True)
    bad = [r for r in rows if failed(r)]
    if bad:
        print(f"{len(bad)} rows lost, duplicated, reordered or crossed notifications", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
