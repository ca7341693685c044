"""A real ``python -m workers`` process publishing through real Redis to real streams."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis
import sqlalchemy as sa

from harness.servers import ROOT, WorkerProcess, wait_until

MESSAGES = 120


@pytest.fixture
def worker_env(server_env):
    return {**server_env, "EXPORT_SLOWDOWN_SECONDS": "0.01"}


@pytest.fixture
def worker(worker_env, tmp_path):
    proc = WorkerProcess(worker_env, tmp_path / "worker.log").start()
    yield proc
    proc.stop()


def add_messages(database_url: str, sender: str, recipient: str, count: int) -> None:
    """Insert messages straight into the database (fast), as if they had been sent."""
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        ids = dict(
            conn.execute(
                sa.text('SELECT username, id FROM "user" WHERE username IN (:a, :b)'),
                {"a": sender, "b": recipient},
            ).all()
        )
        conn.execute(
            sa.text("INSERT INTO message (sender_id, recipient_id, body, timestamp) VALUES (:s, :r, :b, :t)"),
            [
                {"s": ids[sender], "r": ids[recipient], "b": f"bulk {i}", "t": "2026-01-01 00:00:00"}
                for i in range(count)
            ],
        )
    engine.dispose()


def start_export(user) -> httpx.Response:
    page = user.http.get("/messages")
    from harness.clients import csrf_token

    return user.http.post(
        "/export_messages", data={"csrf_token": csrf_token(page.text)}, headers={"Accept": "application/json"}
    )


def progress_until_done(stream, task_id: str) -> list[dict]:
    seen = []
    while True:
        data = stream.next_event("task_progress").json["data"]
        if data["task_id"] != task_id:
            continue
        seen.append(data)
        if data["progress"] == 100 or data["status"] == "failed":
            return seen


def test_export_progress_arrives_in_order_and_the_owner_downloads(make_user, worker, server_env):
    alice, bob = make_user("alice"), make_user("bob")
    add_messages(server_env["DATABASE_URL"], alice.username, bob.username, MESSAGES)
    stream = bob.stream(timeout=30)
    stream.next_block()
    r = start_export(bob)
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]

    second = start_export(bob)
    assert second.status_code == 409 and "already running" in second.json()["error"]

    seen = progress_until_done(stream, task_id)
    progress = [d["progress"] for d in seen]
    assert progress == sorted(set(progress)), "in order, each whole percent at most once"
    assert len(progress) >= 3 and progress[-1] == 100
    url = seen[-1]["download_url"]

    download = bob.http.get(url)
    assert download.status_code == 200
    assert len(json.loads(download.content)["messages"]) == MESSAGES
    assert alice.http.get(url).status_code == 404
    stream.close()


@pytest.fixture
def failing_worker(worker_env, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("exports cannot go under a file")
    proc = WorkerProcess(
        {**worker_env, "EXPORT_DIR": str(blocker / "exports")}, tmp_path / "worker.log"
    ).start()
    yield proc
    proc.stop()


def test_a_failing_job_marks_the_task_failed(make_user, failing_worker, expect_log):
    expect_log(r"exception raised while executing \(workers.jobs.export_messages\)")
    bob = make_user("bob")
    stream = bob.stream(timeout=30)
    stream.next_block()
    task_id = start_export(bob).json()["task_id"]
    last = progress_until_done(stream, task_id)[-1]
    assert last["status"] == "failed" and "NotADirectoryError" in last["error"]
    assert "Failed" in bob.http.get("/messages").text
    stream.close()


def test_a_killed_work_horse_marks_the_task_failed(make_user, worker, server_env):
    alice, bob = make_user("alice"), make_user("bob")
    add_messages(server_env["DATABASE_URL"], alice.username, bob.username, 1000)  # ~10 s of work
    stream = bob.stream(timeout=30)
    stream.next_block()
    task_id = start_export(bob).json()["task_id"]
    while stream.next_event("task_progress").json["data"]["progress"] < 5:
        pass
    [horse] = wait_until(worker.horses, 10, "the work horse")
    horse.kill()
    last = progress_until_done(stream, task_id)[-1]
    assert last["status"] == "failed" and "died" in last["error"]
    assert not list(Path(server_env["EXPORT_DIR"]).rglob("*.part")), "no half-written export stays"
    stream.close()


def test_flask_notify_cli_reaches_stream_and_watchers(make_user, server_env, redis_url):
    bob = make_user("bob")
    watcher = redis.Redis.from_url(redis_url).pubsub()
    watcher.psubscribe("notifications:*")
    watcher.get_message(timeout=2)
    stream = bob.stream()
    stream.next_block()
    env = {**__import__("os").environ, **server_env}
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "flask",
            "--app",
            "wsgi",
            "notify",
            bob.username,
            "announcement",
            '"system upgrade tonight"',
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    event = stream.next_event("announcement")
    assert event.json["data"] == "system upgrade tonight" and event.id
    msg = watcher.get_message(timeout=5)
    assert json.loads(msg["data"])["name"] == "announcement"

    for args, message in (
        (["nobody", "x", "1"], "no user named"),
        ([bob.username, "x", "{oops"], "not valid JSON"),
    ):
        bad = subprocess.run(
            [sys.executable, "-m", "flask", "--app", "wsgi", "notify", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert bad.returncode != 0 and message in bad.stderr
    stream.close()
    watcher.close()
