"""``python -m workers``: an RQ worker on the app's queue, from the same environment as the web."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time

import redis
from rq import Queue, Worker
from rq.job import Job
from rq.worker import WorkerStatus

from app.config import load_config
from workers.jobs import on_work_horse_killed, preload_app, remove_expired_tasks

log = logging.getLogger("workers")


def wait_for_redis(client: redis.Redis, patience: float = 60.0) -> None:
    """Wait (with backoff) for Redis to answer; `make run` starts it beside us."""
    delay, deadline = 0.2, time.monotonic() + patience
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"Redis is not answering after {patience:.0f}s: {exc}") from exc
            log.info("waiting for Redis: %s", exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


# Jobs run in the worker itself, as RQ's SimpleWorker runs every job: many and small, bounded by
# their own timeouts, they would spend more on a fork and a cold process than on their work
# (docs/push.md: ~10 ms a push in-process, ~140 ms in a fresh work horse).
IN_WORKER = ("workers.push.",)


class TidingsWorker(Worker):
    """RQ's worker, whose periodic maintenance also removes expired exports; pushes run in it,
    everything else in a forked work horse."""

    def execute_job(self, job: Job, queue: Queue) -> None:
        if job.func_name.startswith(IN_WORKER):
            self.prepare_execution(job)
            self.perform_job(job, queue)
            self.set_state(WorkerStatus.IDLE)
            return
        super().execute_job(job, queue)

    def kill_horse(self, sig=signal.SIGKILL) -> None:
        """No work horse (a push running in-process): nothing to kill. RQ's would signal the
        process group of pid 0, which is this worker's own."""
        if self.horse_pid:
            super().kill_horse(sig)

    def run_maintenance_tasks(self) -> None:
        """RQ's registry cleaning, then the retention of finished tasks."""
        super().run_maintenance_tasks()
        from app import create_app
        from app.extensions import db

        # A fresh app each time, disposed after: no database connection of this process may
        # be inherited by the work horses it forks.
        app = create_app()
        try:
            remove_expired_tasks(app)
        except Exception:  # retention must never stop the worker
            log.exception("could not remove expired tasks")
        finally:
            with app.app_context():
                db.engine.dispose()


def build_worker(queue: Queue, name: str) -> TidingsWorker:
    """The worker for ``queue``. Every minute it finds abandoned jobs (their worker died) and
    fails their tasks, and removes expired exports; an idle worker wakes from waiting for a job
    every ``worker_ttl`` - 15 s to check, so that wait is kept below the minute."""
    return TidingsWorker(
        [queue],
        connection=queue.connection,
        name=name,
        work_horse_killed_handler=on_work_horse_killed,
        maintenance_interval=60,
        worker_ttl=45,
    )


def main() -> None:
    """Start the worker; SIGTERM lets the current job finish (RQ's warm shutdown)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    instance = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "instance")
    config = load_config(instance)
    connection = redis.Redis.from_url(config["QUEUE_REDIS_URL"])
    wait_for_redis(connection)
    queue = Queue(config["TASK_QUEUE"], connection=connection)
    preload_app()
    worker = build_worker(queue, f"tidings-{socket.gethostname()}-{os.getpid()}")
    log.info("worker %s listening on queue %s at %s", worker.name, queue.name, config["QUEUE_REDIS_URL"])
    # The scheduler (one per queue, whichever worker holds its lock) enqueues what is due:
    # pushes wait PUSH_DELAY_SECONDS, and retries their backoff.
    worker.work(logging_level="INFO", with_scheduler=True)


if __name__ == "__main__":
    sys.exit(main())
