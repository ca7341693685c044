"""The message export as a background task, with RQ in synchronous mode on fakeredis."""

import json

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import Message, Task
from app.tasks import export_path
from workers.jobs import ProgressReporter, on_work_horse_killed


@pytest.fixture
def config(config):
    return {**config, "TASKS_RUN_INLINE": True}


@pytest.fixture
def people(auth, app):
    ids = {name: auth.create(name) for name in ("alice", "bob", "carol")}
    with app.app_context():
        for i in range(30):
            db.session.add(Message(sender_id=ids["alice"], recipient_id=ids["bob"], body=f"to bob {i}"))
        db.session.add(Message(sender_id=ids["bob"], recipient_id=ids["alice"], body="to alice"))
        db.session.add(Message(sender_id=ids["carol"], recipient_id=ids["alice"], body="not bob's"))
        db.session.commit()
    return ids


def running_task(app, user_id: int, task_id: str, **fields) -> None:
    """A task the worker is running (as if started earlier)."""
    with app.app_context():
        task = Task(id=task_id, name="export_messages", description="x", user_id=user_id, **fields)
        task.status = "running"
        db.session.add(task)
        db.session.commit()


def progress_events(fake_redis, user_id):
    pubsub = fake_redis.pubsub()
    pubsub.subscribe(f"notifications:{user_id}")
    pubsub.get_message(timeout=1)
    return pubsub


def drain(pubsub):
    out = []
    while (msg := pubsub.get_message(timeout=0.2)) is not None:
        out.append(json.loads(msg["data"]))
    return out


def test_export_writes_every_message_and_reports_progress_to_100(client, auth, people, fake_redis, app):
    watch = progress_events(fake_redis, people["bob"])
    auth.login("bob")
    r = client.post("/export_messages")
    assert r.status_code == 302
    events = [e for e in drain(watch) if e["name"] == "task_progress"]
    progress = [e["data"]["progress"] for e in events]
    assert progress == sorted(progress) and progress[-1] == 100
    final = events[-1]["data"]
    assert final["download_url"] == f"/exports/{final['task_id']}"
    assert final["description"] == "Export of your messages"
    with app.app_context():
        task = db.session.get(Task, final["task_id"])
        assert task.status == "finished" and task.progress == 100 and task.finished_at is not None

    page = client.get("/messages").get_data(as_text=True)
    assert f'href="/exports/{final["task_id"]}"' in page

    download = client.get(final["download_url"])
    assert download.status_code == 200
    assert "attachment" in download.headers["Content-Disposition"]
    body = json.loads(download.data)
    assert body["user"] == "bob"
    assert len(body["messages"]) == 31
    assert {m["body"] for m in body["messages"]} >= {"to bob 0", "to alice"}
    assert "not bob's" not in {m["body"] for m in body["messages"]}

    auth.logout()
    auth.login("alice")
    assert client.get(final["download_url"]).status_code == 404, "only the owner downloads"
    assert client.get("/exports/no-such-task").status_code == 404


def test_one_export_at_a_time(client, auth, people, app, fake_redis):
    running_task(app, people["bob"], "t-running")
    auth.login("bob")
    r = client.post("/export_messages")
    assert r.status_code == 302
    assert "An export of your messages is already running." in client.get("/messages").get_data(as_text=True)
    r = client.post("/export_messages", headers={"Accept": "application/json"})
    assert r.status_code == 409 and "already running" in r.get_json()["error"]
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Task.id))) == 1
    assert fake_redis.llen("rq:queue:tidings-tasks") == 0


def test_the_database_refuses_a_second_active_task_even_in_a_race(app, people):
    from sqlalchemy.exc import IntegrityError

    with app.app_context():
        for i in range(2):
            db.session.add(Task(id=f"t{i}", name="export_messages", description="x", user_id=people["bob"]))
        with pytest.raises(IntegrityError):
            db.session.commit()


def test_a_failing_export_marks_the_task_failed_and_says_so(client, auth, people, app, fake_redis, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    app.config["EXPORT_DIR"] = str(blocker)
    watch = progress_events(fake_redis, people["bob"])
    auth.login("bob")
    client.post("/export_messages")
    final = [e for e in drain(watch) if e["name"] == "task_progress"][-1]["data"]
    assert final["status"] == "failed" and "NotADirectoryError" in final["error"]
    with app.app_context():
        task = db.session.get(Task, final["task_id"])
        assert task.status == "failed" and task.finished_at is not None
    page = client.get("/messages").get_data(as_text=True)
    assert '<span class="text-danger">Failed</span> · <button type="submit" form="export_form"' in page
    # Once it has failed, a new export may start (the card's Retry is that form's button).
    assert client.post("/export_messages").status_code == 302
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Task.id))) == 2


def test_one_card_per_export_saying_what_it_is_and_finished_ones_dismissible(client, auth, people, app):
    running_task(app, people["bob"], "t-running", progress=40)
    auth.login("bob")
    page = client.get("/messages").get_data(as_text=True)
    assert page.count('class="card mb-3 task"') == 1 and "Preparing… 40%" in page
    assert client.post("/exports/t-running/dismiss").status_code == 409, "a running export stays"
    with app.app_context():
        db.session.get(Task, "t-running").status = "finished"
        db.session.commit()
    export_path(app, people["bob"], "t-running").parent.mkdir(parents=True, exist_ok=True)
    page = client.get("/messages").get_data(as_text=True)
    assert '<span class="text-success">Ready</span> · <a class="task-download"' in page
    assert client.post("/exports/t-running/dismiss").status_code == 302
    assert 'class="card mb-3 task"' not in client.get("/messages").get_data(as_text=True)
    auth.logout()
    auth.login("alice")
    assert client.post("/exports/t-running/dismiss").status_code == 404, "only its owner's"


@pytest.mark.parametrize(
    "language", [("en",), ()], ids=["as enqueued", "enqueued before exports had a title"]
)
def test_a_dead_work_horse_fails_the_task_and_its_half_written_file_goes(app, people, language):
    running_task(app, people["bob"], "t-dead", progress=40)
    partial = export_path(app, people["bob"], "t-dead").with_suffix(".part")
    partial.parent.mkdir(parents=True)
    partial.write_text('{"user": "bob", "messages": [')

    class Job:
        id = "t-dead"
        func_name = "workers.jobs.export_messages"
        args = (people["bob"], "t-dead", *language)

    with app.app_context():  # the worker process's own app, here the test app
        on_work_horse_killed(Job(), 1234, 9, None)
        db.session.remove()
        task = db.session.get(Task, "t-dead")
        assert task.status == "failed" and "died" in task.error and task.progress == 40
    assert not partial.exists()


def test_an_export_that_fails_half_way_leaves_no_partial_file(client, auth, people, app, monkeypatch):
    def one_row_then_fail(condition, size=500):
        yield {"id": 1, "body": "first"}
        raise OSError("disk full")

    monkeypatch.setattr("workers.jobs._in_batches", one_row_then_fail)
    auth.login("bob")
    client.post("/export_messages")
    folder = export_path(app, people["bob"], "x").parent
    assert folder.exists() and not list(folder.iterdir())


def test_progress_is_published_on_whole_percent_changes_only(app, people, fake_redis):
    watch = progress_events(fake_redis, people["bob"])
    running_task(app, people["bob"], "t-p")
    with app.app_context():
        task = db.session.get(Task, "t-p")
        reporter = ProgressReporter(task, min_interval=0)
        for done in range(1, 1001):
            reporter.update(done, 1000)
        throttled = ProgressReporter(task, min_interval=60)
        for done in range(1, 1001):
            throttled.update(done, 1000)
    progress = [e["data"]["progress"] for e in drain(watch)]
    assert progress[:100] == list(range(0, 100)), "0..99, each whole percent once"
    assert progress[100:] == [0], "the throttled reporter published once in its interval"


def test_an_abandoned_job_fails_its_task_when_rq_notices(app, people):
    # RQ's registry cleanup calls the job's failure callback with AbandonedJobError
    # when the whole worker died mid-job.
    from rq.exceptions import AbandonedJobError

    from workers.jobs import on_job_failure

    running_task(app, people["bob"], "t-lost")

    class Job:
        id = "t-lost"

    with app.app_context():
        on_job_failure(Job(), None, AbandonedJobError, AbandonedJobError(), None)
        db.session.remove()
        task = db.session.get(Task, "t-lost")
        assert task.status == "failed" and task.error == "AbandonedJobError"


def test_finished_exports_are_removed_after_the_retention_time(client, auth, people, app):
    from datetime import timedelta

    from app.models import Notification, utcnow
    from app.tasks import export_path
    from workers.jobs import remove_expired_tasks

    auth.login("bob")
    for _ in range(2):
        client.post("/export_messages")
    with app.app_context():
        old, new = db.session.scalars(sa.select(Task).order_by(Task.created_at)).all()
        old.finished_at = utcnow() - timedelta(hours=25)
        db.session.commit()
        old_id, new_id = old.id, new.id
    assert export_path(app, people["bob"], old_id).exists()
    replayed = {e["data"].get("task_id") for e in client.get("/notifications?since=0").get_json()}
    assert {old_id, new_id} <= replayed

    assert remove_expired_tasks(app) == 1
    assert not export_path(app, people["bob"], old_id).exists()
    assert export_path(app, people["bob"], new_id).exists(), "a recent export stays"
    with app.app_context():
        assert db.session.get(Task, old_id) is None and db.session.get(Task, new_id) is not None
        keys = set(db.session.scalars(sa.select(Notification.key)))
    assert f"task_progress:{old_id}" not in keys and f"task_progress:{new_id}" in keys
    assert client.get(f"/exports/{old_id}").status_code == 404


def test_an_idle_worker_runs_its_maintenance_every_minute(fake_redis):
    from rq import Queue

    from workers.__main__ import build_worker

    worker = build_worker(Queue("tidings-tasks", connection=fake_redis), "test-worker")
    # An idle worker checks between waits for a job: each wait must end within the interval.
    assert worker.maintenance_interval == 60
    assert worker.dequeue_timeout < worker.maintenance_interval
