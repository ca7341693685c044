"""Does a failed login's time tell whether the username exists?

``python -m bench.login_timing [--rounds 40]`` starts ``gunicorn -c gunicorn.conf.py wsgi:app``
on a fresh SQLite database with the real password hash (scrypt) and rate limits off, registers
one user, then alternates failed logins naming that user and naming a missing one, and prints
the time each kind took (p10 / median / p90, ms) and the difference of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from harness.clients import WebUser, csrf_token, registered
from harness.servers import LiveServer, RedisServer, make_server_env


def timed_failure(user: WebUser, username: str) -> float:
    page = user.http.get("/auth/login")
    form = {"csrf_token": csrf_token(page.text), "username": username, "password": "not the password"}
    started = time.perf_counter()
    r = user.http.post("/auth/login", data=form)
    elapsed = time.perf_counter() - started
    assert r.status_code == 200 and "Invalid username or password" in r.text
    return elapsed


def summary(values: list[float]) -> str:
    p10, *_, p90 = statistics.quantiles(values, n=10)
    return f"p10 {p10 * 1000:.1f}, median {statistics.median(values) * 1000:.1f}, p90 {p90 * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="tidings-login-timing-"))
    redis_server = RedisServer(tmp).start()
    env = make_server_env(tmp, f"sqlite:///{tmp / 'tidings.db'}", redis_server.url)
    server = LiveServer(env, tmp / "gunicorn.log").start()
    try:
        registered(server.url, "existing")
        guesser = WebUser(server.url, "guesser")
        timed_failure(guesser, "existing")  # warm: the first missing-user hash is made once
        timed_failure(guesser, "missing")
        times: dict[str, list[float]] = {"existing": [], "missing": []}
        for _ in range(args.rounds):
            for name in times:
                times[name].append(timed_failure(guesser, name))
        for name, values in times.items():
            print(f"{name:8} username: {summary(values)} ms ({len(values)} failed logins)")
        gap = statistics.median(times["existing"]) - statistics.median(times["missing"])
        print(f"median difference (existing - missing): {gap * 1000:+.1f} ms")
    finally:
        server.stop()
        redis_server.kill()


if __name__ == "__main__":
    main()
