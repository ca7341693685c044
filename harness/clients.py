"""Helpers shared by the integration tests and the benchmarks: a logged-in HTTP user and an SSE reader."""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

import httpx

from app.notifications import KINDS as _KINDS

KINDS = {kind.name: kind for kind in _KINDS}  # what the store keeps each event by (Kind.key)

CSRF_RE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def csrf_token(html: str) -> str:
    """The CSRF token of the first form in ``html``."""
    match = CSRF_RE.search(html)
    assert match, "no csrf_token in the page"
    return match.group(1)


class WebUser:
    """One browser-like session against a live server (cookies, CSRF tokens)."""

    def __init__(self, base_url: str, username: str, password: str = "correct horse", **options) -> None:
        """``options`` go to the ``httpx.Client`` (e.g. ``http2=True, verify=False`` through nginx)."""
        self.base_url = base_url
        self.username = username
        self.password = password
        self.http = httpx.Client(base_url=base_url, timeout=10, follow_redirects=False, **options)

    def post_form(self, path: str, data: dict, form_page: str | None = None) -> httpx.Response:
        """GET the form's page for a CSRF token, then POST ``data``."""
        page = self.http.get(form_page or path)
        # As a browser would: over HTTPS, Flask-WTF checks that the form came from this site.
        referer = {"Referer": f"{self.base_url}{form_page or path}"}
        return self.http.post(path, data={"csrf_token": csrf_token(page.text), **data}, headers=referer)

    def register(self, email: str | None = None) -> httpx.Response:
        """Register through the form."""
        return self.post_form(
            "/auth/register",
            {
                "username": self.username,
                "email": email or f"{self.username}@example.com",
                "password": self.password,
                "password2": self.password,
            },
        )

    def login(self) -> WebUser:
        """Log in through the form; asserts it worked."""
        r = self.post_form("/auth/login", {"username": self.username, "password": self.password})
        assert r.status_code == 302, r.text
        return self

    def logout(self) -> httpx.Response:
        """Log out with the navbar's form (a POST with its CSRF token)."""
        return self.post_form("/auth/logout", {}, form_page="/")

    def send(self, recipient: str, text: str) -> httpx.Response:
        """Send a private message through the form."""
        return self.post_form(
            f"/send_message/{recipient}", {"message": text}, form_page=f"/messages/{recipient}"
        )

    def script(self, method: str, path: str, body: object, page: str = "/") -> httpx.Response:
        """A page script's request: JSON, with ``page``'s token (its csrf-token meta) in X-CSRFToken."""
        match = re.search(r'<meta name="csrf-token" content="([^"]+)"', self.http.get(page).text)
        assert match, f"no csrf-token meta on {page}"
        headers = {"X-CSRFToken": match.group(1), "Accept": "application/json"}
        return self.http.request(method, path, json=body, headers=headers)

    def cookie_header(self) -> str:
        """The session cookies as a Cookie header."""
        return "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())

    def stream(self, path: str = "/stream", headers: dict | None = None, timeout: float = 5.0) -> SSE:
        """Open an SSE stream on a raw socket with this user's cookies."""
        return SSE.open(self.base_url, path, {"Cookie": self.cookie_header(), **(headers or {})}, timeout)

    def close(self) -> None:
        """Close the HTTP client."""
        self.http.close()


def registered(base_url: str, username: str, **options) -> WebUser:
    """A new user, registered and logged in through the real forms (``options``: httpx's)."""
    user = WebUser(base_url, username, **options)
    assert user.register().status_code == 302, f"could not register {username}"
    return user  # registering logs in


@dataclass
class SSEEvent:
    """One parsed SSE block."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    comments: list[str] = field(default_factory=list)
    retry: str | None = None

    @property
    def json(self):
        """The data line, decoded."""
        return json.loads(self.data)


class SSE:
    """A minimal Server-Sent Events client over a plain socket (chunked transfer decoded)."""

    def __init__(self, sock: socket.socket, status: int, headers: dict[str, str], rest: bytes) -> None:
        self.sock = sock
        self.status = status
        self.headers = headers
        self._raw = rest  # undecoded body bytes
        self._text = ""  # decoded body text
        self.chunked = headers.get("transfer-encoding", "").lower() == "chunked"

    @classmethod
    def open(cls, base_url: str, path: str, headers: dict[str, str], timeout: float) -> SSE:
        """Connect and read the response head."""
        hostport = base_url.split("://", 1)[1].rstrip("/")
        host, port = hostport.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=timeout)
        lines = [f"GET {path} HTTP/1.1", f"Host: {hostport}", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed before headers")
            buf += chunk
        head, rest = buf.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode().split("\r\n")
        parsed = {}
        for line in header_lines:
            k, v = line.split(":", 1)
            parsed[k.strip().lower()] = v.strip()
        return cls(sock, int(status_line.split()[1]), parsed, rest)

    def _decode(self) -> bool:
        """Move complete chunks from raw to text; False when the body ended."""
        if not self.chunked:
            self._text += self._raw.decode()
            self._raw = b""
            return True
        while b"\r\n" in self._raw:
            size_line, after = self._raw.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                return False
            if len(after) < size + 2:
                break
            self._text += after[:size].decode()
            self._raw = after[size + 2 :]
        return True

    def next_block(self) -> SSEEvent | None:
        """The next SSE block (event, comment or retry); None when the server ended the stream.

        Raises socket.timeout if nothing arrives within the socket timeout.
        """
        while "\n\n" not in self._text:
            alive = self._decode()
            if "\n\n" in self._text:
                break
            if not alive:
                return None
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._raw += chunk
        block, self._text = self._text.split("\n\n", 1)
        ev = SSEEvent()
        for line in block.split("\n"):
            if line.startswith(":"):
                ev.comments.append(line[1:].strip())
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key in ("id", "event", "data", "retry"):
                setattr(ev, key, value)
        return ev

    def next_event(self, name: str | None = None) -> SSEEvent:
        """The next real event (skipping comments and retry), optionally of one name."""
        while True:
            block = self.next_block()
            if block is None:
                raise ConnectionError("stream ended")
            if block.event is None and block.data is None:
                continue
            if name is None or block.event == name:
                return block

    def rest(self) -> str:
        """The body of a response that is not a stream (a refusal's JSON), by its Content-Length."""
        length = int(self.headers["content-length"])
        while len(self._raw) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self._raw += chunk
        return self._raw[:length].decode()

    def close(self) -> None:
        """Drop the connection."""
        self.sock.close()


def slow_bodies(port: int, count: int, tls: bool = False) -> list[socket.socket]:
    """``count`` connections (TLS ones to nginx) that start a POST and send one byte of its body."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        if tls:
            s = context.wrap_socket(s)
        s.sendall(
            b"POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 10000\r\n\r\nu"
        )
        socks.append(s)
    return socks


def user_id(env: dict[str, str], username: str) -> int:
    """The id of the user called ``username`` in the database of a server's ``env``."""
    import sqlalchemy as sa

    engine = sa.create_engine(env["DATABASE_URL"])
    with engine.connect() as conn:
        uid = conn.execute(sa.text('SELECT id FROM "user" WHERE username = :u'), {"u": username}).scalar()
    engine.dispose()
    return uid


@dataclass
class Connection:
    """One stream a tab held: when it opened, how long its handshake took, what came on it."""

    opened: float
    handshake: float
    closed: float | None = None
    ids: list[int] = field(default_factory=list)
    keys: list[tuple[str, int]] = field(default_factory=list)  # (what the store keeps it by, id)


@dataclass(eq=False)
class Tab:
    """A browser tab's EventSource, on a thread of its own: it honours the server's ``retry:``,
    reconnects with ``Last-Event-ID``, and keeps what a page would show (the unread count) and
    what a test checks (every connection, every event id on it, every count with its time)."""

    user: WebUser
    stop: threading.Event
    connections: list[Connection] = field(default_factory=list)
    refusals: list[tuple[int, float]] = field(default_factory=list)  # (status, handshake seconds)
    count: int | None = None
    counts: list[tuple[float, int]] = field(default_factory=list)  # (time.monotonic(), count)
    previews: list[dict] = field(default_factory=list)  # new_message data
    last_id: str | None = None
    retry: float = 0.5
    paused: threading.Event = field(default_factory=threading.Event)  # set: stop reading (slow tab)
    thread: threading.Thread | None = None
    stream: SSE | None = None
    closed_by_user: bool = False

    def start(self) -> Tab:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    @property
    def open(self) -> bool:
        return bool(self.connections) and self.connections[-1].closed is None

    def _running(self) -> bool:
        return not self.stop.is_set() and not self.closed_by_user

    def _run(self) -> None:
        while self._running():
            started = time.monotonic()
            try:
                headers = {"Last-Event-ID": self.last_id} if self.last_id else None
                s = self.user.stream(headers=headers, timeout=10)
            except OSError:
                time.sleep(self.retry)
                continue
            handshake = time.monotonic() - started
            if s.status != 200:
                self.refusals.append((s.status, handshake))
                s.close()
                time.sleep(self.retry)
                continue
            conn = Connection(opened=time.monotonic(), handshake=handshake)
            self.connections.append(conn)
            self.stream = s
            try:
                while (block := s.next_block()) is not None:
                    self._take(conn, block)
                    while self.paused.is_set() and self._running():
                        time.sleep(0.05)
            except (OSError, ValueError):
                pass
            conn.closed = time.monotonic()
            s.close()
            if self._running():
                time.sleep(self.retry)

    def _take(self, conn: Connection, block: SSEEvent) -> None:
        if block.retry:
            self.retry = int(block.retry) / 1000
        if block.id:
            self.last_id = block.id
            conn.ids.append(int(block.id))
            kind = KINDS.get(block.event)
            key = kind.key(block.json.get("data")) if kind else block.event
            conn.keys.append((key, int(block.id)))
        if block.event == "unread_message_count":
            self.count = block.json["data"]
            self.counts.append((time.monotonic(), self.count))
        elif block.event == "new_message":
            self.previews.append(block.json["data"])

    def close(self) -> None:
        """Close the tab: its stream ends and it does not reconnect."""
        self.closed_by_user = True
        self.drop()

    def drop(self) -> None:
        """Cut the current connection, as a flaky network does; the tab reconnects."""
        if self.stream is not None:
            try:
                self.stream.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
