"""Push jobs per second one background worker sends to a push service.

    python -m bench.push [--jobs 300]

A private PostgreSQL and Redis, a push service of our own (harness/fakepush.py: HTTPS on
127.0.0.1; it verifies each push's VAPID signature and decrypts it, and answers 201), and one
``python -m workers``, as operators start it. ``--jobs`` users each have one device subscribed
and one unread message whose ``new_message`` notification is due; their push jobs are queued
before the worker starts, and the rate is counted from the first push the service takes to the
last. Each job does what a due push does in production: reads the notification, the devices and
the message, asks presence whether a tab is looking, renders the text in the user's language,
encrypts, signs and POSTs. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from rq import Queue

from bench.harness import create_users, machine, percentiles
from harness.fakepush import FakePushService
from harness.servers import PostgresServer, RedisServer, WorkerProcess, migrate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-push-"))
    os.chmod(tmp, 0o755)
    redis_server = RedisServer(tmp).start()
    (tmp / "pg").mkdir()
    pg = PostgresServer(tmp / "pg").start()
    service = FakePushService(tmp).start()
    env = {
        "DATABASE_URL": pg.url,
        "REDIS_URL": redis_server.url,
        "SECRET_KEY": "bench-secret",
        **service.settings("mailto:bench@tidings.test"),
    }
    worker = None
    try:
        migrate({**os.environ, **env})
        users = create_users(pg.url, args.jobs)
        jobs = prepare(pg.url, users, service)
        queue = Queue("tidings-tasks", connection=__import__("redis").Redis.from_url(redis_server.url))
        for user_id, note_id in jobs:
            queue.enqueue("workers.push.push_notification", user_id, note_id, result_ttl=0)
        worker = WorkerProcess(env, tmp / "worker.log").start()
        started = time.monotonic()
        pushes = service.wait_for(len(jobs), timeout=600)
        took = time.monotonic() - started
    finally:
        if worker is not None:
            worker.stop()
        service.stop()
        redis_server.kill()
        pg.remove()
    bad = [p for p in pushes if p.problem]
    arrivals = sorted(p.received for p in pushes)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    rate = (len(arrivals) - 1) / (arrivals[-1] - arrivals[0])
    print(f"One push worker (python -m workers) to a local push service; {machine()}\n")
    print(
        "| pushes | refused by the service | jobs/s (first push to last) | ms between pushes p50 / p99 "
        "| all, from worker start (s) |"
    )
    print("|---|---|---|---|---|")
    p = percentiles(gaps)
    print(f"| {len(pushes)} | {len(bad)} | {rate:.1f} | {p['p50']:.1f} / {p['p99']:.1f} | {took:.1f} |")


def prepare(db_url: str, users: list[dict], service: FakePushService) -> list[tuple[int, int]]:
    """One device, one unread message and its due ``new_message`` per user; their ids."""
    engine = sa.create_engine(db_url)
    jobs = []
    with engine.begin() as conn:
        sender = conn.execute(sa.text("SELECT id FROM \"user\" WHERE username = 'benchsender'")).scalar()
        for user in users:
            device = service.device().subscription()
            login = conn.execute(
                sa.text("SELECT id FROM login WHERE user_id = :u"), {"u": user["id"]}
            ).scalar()
            conn.execute(
                sa.text(
                    "INSERT INTO push_subscription"
                    " (user_id, login_id, endpoint, p256dh, auth, user_agent, created_at)"
                    " VALUES (:u, :l, :e, :p, :a, '', now())"
                ),
                {
                    "u": user["id"],
                    "l": login,
                    "e": device["endpoint"],
                    "p": device["keys"]["p256dh"],
                    "a": device["keys"]["auth"],
                },
            )
            message = conn.execute(
                sa.text(
                    "INSERT INTO message (sender_id, recipient_id, body, timestamp)"
                    " VALUES (:s, :u, :b, now()) RETURNING id"
                ),
                {"s": sender, "u": user["id"], "b": f"hello {user['username']}"},
            ).scalar()
            data = {"message_id": message, "sender": "benchsender", "preview": f"hello {user['username']}"}
            note = conn.execute(
                sa.text(
                    "INSERT INTO notification (user_id, name, key, timestamp, payload_json)"
                    " VALUES (:u, 'new_message', 'new_message', :t, :p) RETURNING id"
                ),
                {"u": user["id"], "t": time.time(), "p": json.dumps(data)},
            ).scalar()
            jobs.append((user["id"], note))
    engine.dispose()
    return jobs


if __name__ == "__main__":
    main()
