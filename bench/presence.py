"""What presence costs Redis: writes per second at 10,000 and 50,000 open streams.

    python -m bench.presence [--streams 10000 50000] [--workers 4] [--interval 10] [--rounds 6]

A private redis-server; ``--workers`` simulated workers split the streams (one user each: the
worst case, a user with several tabs shares one stream per browser and one member per worker),
and each calls the real ``Presence.refresh`` once per round with its users, a tenth of them
looking, as ``Streams._vouch`` does every ``--interval`` seconds. The rounds run back to back;
Redis' own counters (INFO commandstats) give the commands and the microseconds they cost, scaled
to one round per interval. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import redis

from bench.harness import machine
from flask_tidings.presence import Presence
from harness.servers import RedisServer

COMMANDS = ("zadd", "zremrangebyscore")


def commandstats(client: redis.Redis) -> dict[str, tuple[int, int]]:
    stats = client.info("commandstats")
    return {
        c: (stats.get(f"cmdstat_{c}", {}).get("calls", 0), stats.get(f"cmdstat_{c}", {}).get("usec", 0))
        for c in COMMANDS
    }


def measure(client: redis.Redis, streams: int, workers: int, interval: float, rounds: int) -> dict:
    client.flushdb()
    presence = Presence(client, interval)
    shares = [list(range(w, streams, workers)) for w in range(workers)]
    for share in shares:  # the first round adds every member; the steady state is what counts
        presence.refresh(share, share[::10])
    before = commandstats(client)
    started = time.perf_counter()
    for _ in range(rounds):
        for share in shares:
            presence.refresh(share, share[::10])
    wall = time.perf_counter() - started
    after = commandstats(client)
    calls = sum(after[c][0] - before[c][0] for c in COMMANDS)
    usec = sum(after[c][1] - before[c][1] for c in COMMANDS)
    members = rounds * (streams + len(range(0, streams, 10)))
    return {
        "streams": streams,
        "commands_per_s": calls / rounds / interval,
        "members_per_s": members / rounds / interval,
        "redis_ms_per_s": usec / 1000 / rounds / interval,
        "round_ms": wall / rounds * 1000,
        "memory_mb": client.info("memory")["used_memory"] / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            client = redis.Redis.from_url(server.url)
            rows = [measure(client, n, args.workers, args.interval, args.rounds) for n in args.streams]
        finally:
            server.kill()
    print(f"Presence in Redis, {args.workers} workers, one write each per {args.interval:g} s; {machine()}\n")
    print(
        "| open streams | Redis commands/s | members written/s | Redis CPU ms/s "
        "| one round, all workers (ms) | Redis memory (MB) |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['streams']:,} | {r['commands_per_s']:.1f} | {r['members_per_s']:,.0f} "
            f"| {r['redis_ms_per_s']:.2f} | {r['round_ms']:.1f} | {r['memory_mb']:.1f} |"
        )


if __name__ == "__main__":
    main()
