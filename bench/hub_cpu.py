"""The hub's own CPU per message: ``python -m bench.hub_cpu [--connections N] [--rate R]``.

One gevent process holds ``--connections`` hubs on the local Redis (``--redis``), as a worker
on a cluster holds one per master (1 = a single Redis), with 1,000 users' channels spread over
them and a stream per user that only counts. A child process publishes ``--rate`` messages/s
in 1 ms batches, each connection's share in its own pipeline. Prints the hub process's CPU per
message: what reading, parsing and fanning out cost, without any stream's socket write.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after monkey-patching, as in a gunicorn gevent worker
import json  # noqa: E402
import multiprocessing  # noqa: E402
import resource  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import redis  # noqa: E402

from flask_tidings.events import channel_for  # noqa: E402
from flask_tidings.hub import Hub  # noqa: E402

USERS = 1000


class CountingSink:
    delivered = 0

    def send_event(self, event) -> None:
        CountingSink.delivered += 1

    def reread(self) -> None:
        pass

    def close(self) -> None:
        pass


def publish(url: str, rate: float, seconds: float, connections: int) -> None:
    client = redis.Redis.from_url(url)
    start, sent = time.time(), 0
    while (now := time.time()) < start + seconds:
        due = int((now - start + 0.001) * rate) - sent
        if due > 0:
            pipes = [client.pipeline(transaction=False) for _ in range(connections)]
            for _ in range(due):
                user = sent % USERS
                body = json.dumps({"name": "bench", "data": {"n": sent}, "timestamp": time.time()})
                pipes[user % connections].publish(channel_for(user + 1), body)
                sent += 1
            for pipe in pipes:
                pipe.execute()
        time.sleep(max(0.0, start + sent / rate - time.time()))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--rate", type=float, default=1500, help="messages per second")
    parser.add_argument("--seconds", type=float, default=5)
    args = parser.parse_args()

    options = redis.connection.parse_url(args.redis)

    def connect():
        conn = redis.Connection(**options, client_name="tidings-hub-bench")
        conn.connect()
        return conn

    hubs = [Hub(connect) for _ in range(args.connections)]
    for user in range(USERS):
        hubs[user % args.connections].subscribe(user + 1).attach(CountingSink())
    before = cpu_seconds()
    child = multiprocessing.get_context("spawn").Process(
        target=publish, args=(args.redis, args.rate, args.seconds, args.connections)
    )
    child.start()
    while child.is_alive():
        gevent.sleep(0.1)
    gevent.sleep(0.3)
    used = cpu_seconds() - before
    n = CountingSink.delivered
    print(
        f"{args.connections} connection(s), {args.rate:g} messages/s: {n} delivered, "
        f"{used:.2f} s of CPU, {used / max(n, 1) * 1e6:.1f} µs per message"
    )


if __name__ == "__main__":
    main()
