"""examples/minimal: another Flask app adopting Flask-Tidings through its public API only gets live
notifications from a `flask` command and from an RQ job, served by gunicorn with StreamWorker."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.servers import BIN, ROOT, LiveServer, _Logged, wait_until

EXAMPLE = ROOT / "examples" / "minimal"


class ExampleWorker(_Logged):
    """``rq worker`` in the example's folder, on its default queue."""

    cwd = EXAMPLE

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__(env, log)
        self.command = [BIN / "rq", "worker", "--url", env["REDIS_URL"]]

    def start(self) -> ExampleWorker:
        self._spawn()
        wait_until(
            lambda: "Listening on default" in self.log(), 30, f"the example's RQ worker ({self.log_path})"
        )
        return self


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """Flask-Tidings as ``pip install`` of this repository gives it, in a folder of its own (its
    dependencies are this environment's): the example must not see the checkout's packages."""
    target = tmp_path_factory.mktemp("site-packages")
    subprocess.run(
        [BIN / "python", "-m", "pip", "install", "-q", "--no-deps", "--target", target, ROOT],
        check=True,
        timeout=300,
    )
    assert (target / "flask_tidings" / "static" / "tidings.js").is_file(), "the browser client is packaged"
    assert not (target / "app").exists(), "only the engine is installed"
    return target


@pytest.fixture
def example(tmp_path, redis_url, installed):
    """The example's gunicorn (two workers) and its RQ worker, on their own SQLite database."""
    env = {
        "REDIS_URL": redis_url,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'minimal.db'}",
        "PYTHONPATH": str(installed),
        "WEB_CONCURRENCY": "2",
    }
    web = LiveServer(
        env, tmp_path / "gunicorn.log", "-w", "2", app="minimal:app", cwd=EXAMPLE, ready_path="/"
    )
    web.start()
    worker = ExampleWorker(env, tmp_path / "rq.log").start()
    yield web
    worker.stop()
    web.stop()


def flask(web: LiveServer, *args: str) -> None:
    """``flask --app minimal …`` in the example's folder, as its README says."""
    subprocess.run(
        [BIN / "flask", "--app", "minimal", *args], cwd=EXAMPLE, env=web.env, check=True, timeout=60
    )


def test_pings_from_a_command_and_from_a_job_arrive_live_and_again_after_a_reload(browser, example):
    page = browser.new_context(base_url=example.url).new_page()
    page.goto("/")
    page.fill("input[name=name]", "ada")
    page.click("button")
    page.wait_for_selector("body[data-stream-state=open]")
    pings = page.locator("#pings li")

    flask(example, "ping", "ada", "from the command")
    pings.filter(has_text="from the command").wait_for()
    flask(example, "ping", "--later", "ada", "from a job")
    pings.filter(has_text="from a job").wait_for()
    assert pings.all_inner_texts() == ["from the command", "from a job"]

    page.reload()
    page.wait_for_selector("body[data-stream-state=open]")
    pings.nth(1).wait_for()
    assert pings.all_inner_texts() == ["from the command", "from a job"], "replayed once each"
