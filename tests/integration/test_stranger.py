"""A stranger's first hour: ``pip install <checkout>`` with no extras into a fresh venv, then a
Flask app of their own (tests/stranger/shop.py: uuid hex string primary keys, written from
docs/extension.md) served by gunicorn: a logged-in page, ``/stream`` under a url prefix, a
``notify()`` from a view arriving live, and a reconnect with ``Last-Event-ID`` replaying what
it missed. The install writes nothing into the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import httpx
import pytest

from harness.clients import SSE
from harness.servers import ROOT, LiveServer

pytestmark = pytest.mark.integration

SHOP = ROOT / "tests" / "stranger"
# What a checkout holds that is not the package's source: left out of the copy that is installed.
NOT_COPIED = shutil.ignore_patterns(".git", ".venv*", "instance", "__pycache__", "*.pyc", ".*_cache", "bench")


def files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def stranger_venv(tmp_path_factory) -> Path:
    """A fresh venv with Flask-Tidings from a copy of this checkout, and nothing else asked for."""
    tmp = tmp_path_factory.mktemp("stranger")
    checkout = tmp / "checkout"
    shutil.copytree(ROOT, checkout, ignore=NOT_COPIED)
    before = files(checkout)
    env_dir = tmp / "venv"
    venv.create(env_dir, with_pip=True)
    done = subprocess.run(
        [env_dir / "bin" / "python", "-m", "pip", "install", "-q", str(checkout)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert files(checkout) == before, f"the install wrote into the checkout: {files(checkout) - before}"
    return env_dir


@pytest.fixture(params=["redis", "memory"])
def shop(request, stranger_venv, tmp_path):
    """The shop's gunicorn from the stranger's venv, on its own SQLite database: two workers on
    Redis, or one on the in-memory backend (``memory://``: no Redis, one process)."""
    memory = request.param == "memory"
    workers = "1" if memory else "2"
    env = {
        "REDIS_URL": "memory://shop" if memory else request.getfixturevalue("redis_url"),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'shop.db'}",
        "WEB_CONCURRENCY": workers,
        # Nothing of this checkout's own environment: only what the stranger's venv installed.
        "PYTHONPATH": "",
        "VIRTUAL_ENV": str(stranger_venv),
    }
    server = LiveServer(
        env, tmp_path / "gunicorn.log", "-w", workers, app="shop:app", cwd=SHOP, ready_path="/about"
    )
    server.command[0] = stranger_venv / "bin" / "gunicorn"
    server.start()
    yield server
    server.stop()


def test_a_string_keyed_app_gets_live_notifications_and_a_replay_from_a_plain_install(shop):
    assert sys.prefix not in str(shop.command[0])
    with httpx.Client(base_url=shop.url, follow_redirects=True, timeout=10) as ada:
        page = ada.get("/login/ada")
        assert page.status_code == 200 and "Hello ada" in page.text
        assert 'data-stream-url="/live/stream"' in page.text, "the blueprint sits under its prefix"
        cookie = "; ".join(f"{k}={v}" for k, v in ada.cookies.items())

        stream = SSE.open(shop.url, "/live/stream", {"Cookie": cookie}, timeout=5)
        assert stream.status == 200
        shipped = ada.post("/orders/A-1/ship").json()
        assert len(shipped["customer"]) == 32, "a uuid hex string is the customer's id"
        live = stream.next_event("order_shipped")
        assert live.json["data"] == {"order": "A-1"} and live.id == str(shipped["id"])
        stream.close()

        missed = ada.post("/orders/B-2/ship").json()
        again = SSE.open(shop.url, "/live/stream", {"Cookie": cookie, "Last-Event-ID": live.id}, timeout=5)
        replayed = again.next_event("order_shipped")
        assert replayed.json["data"] == {"order": "B-2"} and replayed.id == str(missed["id"])
        again.close()
    assert shop.new_problems([]) == [], "no traceback in the shop's log"
