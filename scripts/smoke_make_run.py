"""CI's first check: the README's `make run` in a fresh clone, used as a newcomer would.

Clones this repository into a temporary folder (so its venv gets only requirements.txt),
runs `make run` there with no REDIS_URL (the embedded Redis), waits for the home page,
registers two users, opens one's notification stream, sends it a message from the other
and waits for the event; then presses Ctrl-C (SIGINT to the process group, as a terminal
does) and checks that every process it started is gone. Standard library only: it runs
before any venv exists. Exit status 0 on success, 1 with the reason and the log otherwise.
"""

from __future__ import annotations

import http.client
import http.cookiejar
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')
STARTUP_SECONDS = 600  # a fresh venv is installed first


class Failed(Exception):
    """The smoke test failed; the message says where."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Browser:
    """A cookie-keeping client for the site's forms (no redirects followed)."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.jar), self._NoRedirect()
        )

    def request(self, path: str, data: dict | None = None) -> tuple[int, str]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        try:
            with self.opener.open(self.base + path, body, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as resp:
            return resp.code, resp.read().decode()

    def submit(self, path: str, fields: dict) -> int:
        status, page = self.request(path)
        token = CSRF.search(page)
        if status != 200 or not token:
            raise Failed(f"GET {path} answered {status} without a form")
        status, _ = self.request(path, {"csrf_token": token.group(1), **fields})
        return status

    def cookie_header(self) -> str:
        return "; ".join(f"{c.name}={c.value}" for c in self.jar)


def wait_for_home(base: str, make: subprocess.Popen) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if make.poll() is not None:
            raise Failed(f"`make run` exited with status {make.returncode} before serving")
        try:
            with urllib.request.urlopen(base + "/", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.5)
    raise Failed(f"nothing served {base}/ within {STARTUP_SECONDS}s")


def try_it(base: str, port: int) -> None:
    """Register two users (each logged in by it), open bob's stream, send from alice, see the
    event arrive."""
    alice, bob = Browser(base), Browser(base)
    for user, name in ((alice, "alice"), (bob, "bob")):
        password = "correct horse battery"
        fields = {"username": name, "email": f"{name}@example.com"}
        fields.update(password=password, password2=password)
        if user.submit("/auth/register", fields) != 302:  # registering logs the user in
            raise Failed(f"registering {name} did not redirect")

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    conn.request("GET", "/stream", headers={"Cookie": bob.cookie_header(), "Accept": "text/event-stream"})
    stream = conn.getresponse()
    if stream.status != 200:
        raise Failed(f"/stream answered {stream.status}: {stream.read(500)!r}")
    if alice.submit("/messages/bob", {"message": "hello from the smoke test"}) != 302:
        raise Failed("sending a message did not redirect")
    deadline = time.monotonic() + 15
    event = None
    while time.monotonic() < deadline:
        line = stream.fp.readline().decode()
        if not line:
            raise Failed("the stream ended before the event arrived")
        if line.startswith("event: unread_message_count"):
            event = json.loads(stream.fp.readline().decode().removeprefix("data: "))
            break
    conn.close()
    if not event or event["data"] != 1:
        raise Failed(f"bob's stream did not get unread_message_count = 1 (got {event!r})")


def leftovers(folder: Path) -> list[str]:
    """Processes still running from ``folder`` (their working directory or command line)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cwd.startswith(str(folder)) or str(folder) in cmdline:
            found.append(f"{pid}: {cmdline.strip()}")
    return found


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="tidings-smoke-"))
    clone = tmp / "tidings"
    log_path = tmp / "make-run.log"
    make = None
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        port, redis_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "VIRTUAL_ENV")}
        env.update(PORT=str(port), EMBEDDED_REDIS_PORT=str(redis_port))
        with open(log_path, "wb") as log:
            make = subprocess.Popen(
                ["make", "run"],
                cwd=clone,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base = f"http://127.0.0.1:{port}"
        wait_for_home(base, make)
        print(f"smoke: `make run` serves {base}", flush=True)
        try_it(base, port)
        print("smoke: registered two users; a message reached the recipient's stream", flush=True)

        os.killpg(make.pid, signal.SIGINT)  # Ctrl-C in the terminal
        try:
            make.wait(60)
        except subprocess.TimeoutExpired:
            raise Failed("`make run` still running 60 s after Ctrl-C") from None
        deadline = time.monotonic() + 20
        while (left := leftovers(clone)) and time.monotonic() < deadline:
            time.sleep(0.5)
        if left:
            raise Failed("processes left running after Ctrl-C:\n  " + "\n  ".join(left))
        print("smoke: Ctrl-C stopped every process `make run` started", flush=True)
        return 0
    except (Failed, subprocess.CalledProcessError, OSError) as exc:
        print(f"smoke FAILED: {exc}", file=sys.stderr)
        if log_path.exists():
            print("---- make run's output ----", file=sys.stderr)
            print(log_path.read_text(errors="replace")[-20000:], file=sys.stderr)
        return 1
    finally:
        if make is not None and make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
        for line in leftovers(clone):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
