"""A load-generating process: many SSE streams (or pollers) on raw gevent sockets.

Controlled by the orchestrator through JSON lines on stdin/stdout. Each stream binds to a
source address in 127.0.0.2–127.0.0.250 so tens of thousands of connections do not run out
of ephemeral ports on one address. Closed streams reconnect like an EventSource does
(after the server's ``retry:``, with ``Last-Event-ID``), which is what (g) measures.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402

# Tidings writes "field: value"; Flask-SSE writes "field:value".
MARKS = (b"event: bench\ndata: ", b"event:bench\ndata:")
T_RE = re.compile(rb'"t":\s*([0-9.eE+-]+)')
COUNT_MARK = b"event: unread_message_count\ndata: "


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read an HTTP response head; returns it and whatever body bytes came with it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the response head")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


class Stream:
    """One SSE connection."""

    __slots__ = ("client", "spec", "sock", "open", "last_id", "connected_at", "retry", "last_count")

    def __init__(self, client: "Client", spec: dict) -> None:
        self.client = client
        self.spec = spec
        self.sock = None
        self.open = False
        self.last_id = None
        self.connected_at = 0.0
        self.retry = None  # the server's last ``retry:``, in seconds, as an EventSource keeps it
        self.last_count = None

    def connect(self) -> bool:
        c = self.client
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((self.spec["src"], 0))
            sock.settimeout(30)
            sock.connect((c.host, c.port))
            headers = f"GET {self.spec['path']} HTTP/1.1\r\nHost: {c.host}:{c.port}\r\n"
            headers += "Accept: text/event-stream\r\n"
            if self.spec.get("cookie"):
                headers += f"Cookie: {self.spec['cookie']}\r\n"
            if self.last_id:
                headers += f"Last-Event-ID: {self.last_id}\r\n"
            sock.sendall((headers + "\r\n").encode())
            if self.spec.get("lazy"):
                # Flask-SSE sends its headers only with the first event: count the request as open.
                sock.settimeout(None)
                self.sock, self.open, self.connected_at = sock, True, time.time()
                c.opened += 1
                c.last_connect = self.connected_at
                gevent.spawn(self.read, b"", True)
                return True
            head, rest = read_head(sock)
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                raise ConnectionError(f"status {status}")
            sock.settimeout(None)
            self.sock = sock
            self.open = True
            self.connected_at = time.time()
            c.opened += 1
            c.last_connect = self.connected_at
            gevent.spawn(self.read, rest)
            return True
        except OSError as exc:
            c.errors += 1
            c.last_error = repr(exc)
            return False

    def read(self, pending: bytes, head_pending: bool = False) -> None:
        c = self.client
        sock = self.sock
        try:
            while True:
                if head_pending and b"\r\n\r\n" in pending:
                    head, pending = pending.split(b"\r\n\r\n", 1)
                    head_pending = False
                    if int(head.split(b" ", 2)[1]) != 200:
                        c.errors += 1
                        break
                if not head_pending and b"\n\n" in pending:
                    head, _, pending = pending.rpartition(b"\n\n")
                    c.on_data(self, head)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                pending += chunk
        except OSError:
            pass
        self.open = False
        c.closed += 1
        sock.close()
        if c.reconnect and not c.stopping:
            gevent.spawn_later(c.retry_seconds if self.retry is None else self.retry, self.reconnect)

    def reconnect(self) -> None:
        delay = 0.5
        while not self.client.stopping and not self.connect():
            gevent.sleep(delay)
            delay = min(delay * 2, 5)

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Client:
    """The state of this load process."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams: list[Stream] = []
        self.opened = self.errors = self.closed = 0
        self.last_error = ""
        self.last_connect = 0.0
        self.reconnect = True
        self.retry_seconds = 0.5
        self.honour_retry = False
        self.stopping = False
        self.latencies: list[float] = []  # bench events: receive time minus the publisher's time
        self.counts: list[tuple[int, int, float]] = []  # (user_id, count, receive time)
        self.events = 0
        self.heartbeats = 0
        self.poll_requests = self.poll_errors = 0

    def on_data(self, stream: Stream, block: bytes) -> None:
        now = time.time()
        self.heartbeats += block.count(b": keepalive")
        for mark in MARKS:
            start = 0
            while (i := block.find(mark, start)) != -1:
                end = block.find(b"\n", i + len(mark))
                end = len(block) if end == -1 else end
                # The publisher's send time, without decoding the whole JSON.
                self.latencies.append(now - float(T_RE.search(block, i + len(mark), end).group(1)))
                self.events += 1
                start = end
        start = 0
        while (i := block.find(COUNT_MARK, start)) != -1:
            end = block.find(b"\n", i + len(COUNT_MARK))
            end = len(block) if end == -1 else end
            body = json.loads(block[i + len(COUNT_MARK) : end])
            self.counts.append((stream.spec.get("user_id", 0), body["data"], now))
            stream.last_count = body["data"]
            self.events += 1
            start = end
        # Keep the newest id, as an EventSource would, for Last-Event-ID on reconnect, and the
        # server's reconnection time (a draining worker spreads its clients with it).
        for line in block.split(b"\n"):
            if line.startswith(b"id: "):
                stream.last_id = line[4:].decode()
            elif line.startswith(b"retry: ") and self.honour_retry:
                stream.retry = int(line[7:]) / 1000

    def open_streams(self, specs: list[dict], concurrency: int) -> dict:
        started = time.time()
        pool = gevent.pool.Pool(concurrency)
        new = [Stream(self, spec) for spec in specs]
        self.streams.extend(new)
        before_errors = self.errors
        pool.map(lambda s: s.connect(), new)
        return {
            "opened": sum(s.open for s in new),
            "errors": self.errors - before_errors,
            "seconds": time.time() - started,
            "last_error": self.last_error,
        }

    def poll(self, specs: list[dict], interval: float, duration: float) -> dict:
        """Seed-style polling: each client GETs its URL every ``interval`` seconds."""
        deadline = time.time() + duration
        latencies: list[float] = []

        def poller(spec: dict) -> None:
            gevent.sleep(interval * (hash(spec["path"] + spec["src"]) % 1000) / 1000)
            while time.time() < deadline:
                t0 = time.time()
                # A fresh connection per poll: 10 s outlasts the server's keep-alive, as in browsers.
                sock = socket.socket()
                try:
                    sock.bind((spec["src"], 0))
                    sock.connect((self.host, self.port))
                    sock.sendall(
                        f"GET {spec['path']} HTTP/1.1\r\nHost: x\r\nCookie: {spec['cookie']}\r\n\r\n".encode()
                    )
                    head, body = read_head(sock)
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    while len(body) < length:
                        body += sock.recv(65536)
                    self.poll_requests += 1
                    latencies.append(time.time() - t0)
                except OSError:
                    self.poll_errors += 1
                finally:
                    sock.close()
                # The next poll, or the end of the run if that comes first.
                gevent.sleep(max(0.0, min(t0 + interval, deadline) - time.time()))

        gevent.joinall([gevent.spawn(poller, s) for s in specs])
        return {"requests": self.poll_requests, "errors": self.poll_errors, "latencies": latencies}

    def stats(self) -> dict:
        return {
            "open": sum(s.open for s in self.streams),
            "total": len(self.streams),
            "opened": self.opened,
            "errors": self.errors,
            "closed": self.closed,
            "events": self.events,
            "heartbeats": self.heartbeats,
            "last_connect": self.last_connect,
            "last_error": self.last_error,
        }

    def take(self) -> dict:
        lat, counts = self.latencies, self.counts
        self.latencies, self.counts = [], []
        return {"latencies": lat, "counts": counts}

    def close_all(self) -> dict:
        self.stopping = True
        for s in self.streams:
            s.close()
        gevent.sleep(0.5)
        self.streams = []
        self.stopping = False
        return self.stats()


def main() -> None:
    raise_nofile()
    host, port = sys.argv[1], int(sys.argv[2])
    client = Client(host, port)
    stdin = gevent.fileobject.FileObjectThread(sys.stdin)
    for line in stdin:
        cmd = json.loads(line)
        name = cmd.pop("cmd")
        if name == "open":
            result = client.open_streams(cmd["specs"], cmd.get("concurrency", 200))
        elif name == "stats":
            result = client.stats()
        elif name == "take":
            result = client.take()
        elif name == "poll":
            result = client.poll(cmd["specs"], cmd["interval"], cmd["duration"])
        elif name == "converged":
            want = cmd["expected"]
            result = {
                "converged": sum(
                    s.open and s.last_count == want.get(str(s.spec.get("user_id"))) for s in client.streams
                )
            }
        elif name == "close":
            result = client.close_all()
        elif name == "config":
            client.reconnect = cmd.get("reconnect", client.reconnect)
            client.retry_seconds = cmd.get("retry_seconds", client.retry_seconds)
            client.honour_retry = cmd.get("honour_retry", client.honour_retry)
            result = {"ok": True}
        elif name == "exit":
            break
        else:
            result = {"error": f"unknown command {name}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    import gevent.fileobject  # noqa: F401

    main()
