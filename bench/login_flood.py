"""``GET /`` latency while clients hammer the login form with wrong passwords.

``python -m bench.login_flood [--root CHECKOUT] [--clients 6] [--seconds 10]`` starts
``gunicorn -c gunicorn.conf.py wsgi:app`` from CHECKOUT (default: this one; point it at an
older checkout for a before/after) on a fresh SQLite database with the real password hash
(scrypt), rate limits off (``RATELIMIT_ENABLED=0``: this measures what the hashing costs the
event loop, not the limits), and prints ``GET /`` p50/p99/max idle and under the flood.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from harness.servers import free_port, wait_until

CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


def latencies(url: str, seconds: float) -> list[float]:
    out, deadline = [], time.monotonic() + seconds
    with httpx.Client(timeout=10) as client:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            client.get(url + "/")
            out.append(time.perf_counter() - started)
            time.sleep(0.05)
    return out


def guess(url: str, stop: threading.Event, counter: list[int]) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            token = CSRF.search(client.get("/auth/login").text).group(1)
            client.post("/auth/login", data={"csrf_token": token, "username": "victim", "password": "nope"})
            counter[0] += 1


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    p50, top = statistics.median(ordered), ordered[-1]
    return f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {top * 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tidings-flood-"))
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp / 'db.sqlite'}",
        "SECRET_KEY": "flood",
        "PORT": str(port),
        "RATELIMIT_ENABLED": "0",
        "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/13"),
    }
    env.pop("BIND", None)
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "flask", "--app", "wsgi", "db", "upgrade"], cwd=args.root, env=env, check=True)
    log = open(tmp / "gunicorn.log", "wb")
    server = subprocess.Popen(
        [bin_dir / "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
        cwd=args.root,
        env=env,
        stdout=log,
        stderr=log,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _up(url), 30, "gunicorn")
        with httpx.Client(base_url=url, timeout=30) as client:  # the account being guessed
            token = CSRF.search(client.get("/auth/register").text).group(1)
            pw = "the right password"
            form = {"csrf_token": token, "username": "victim", "email": "v@example.com"}
            assert (
                client.post("/auth/register", data={**form, "password": pw, "password2": pw}).status_code
                == 302
            )
        idle = latencies(url, args.seconds / 2)
        stop, counter = threading.Event(), [0]
        threads = [threading.Thread(target=guess, args=(url, stop, counter)) for _ in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(1)
        flooded = latencies(url, args.seconds)
        stop.set()
        for t in threads:
            t.join()
    finally:
        server.terminate()
        server.wait()
    print(f"checkout: {args.root}")
    print(f"GET / idle: {summary(idle)}")
    print(
        f"GET / while {args.clients} clients post wrong passwords "
        f"({counter[0] / (args.seconds + 1):.0f} attempts/s): {summary(flooded)}"
    )


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/auth/login", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    main()
