"""The publish API against a real gunicorn: schemathesis fuzzes it from its own OpenAPI document
(no 5xx, every answer as documented), and the key CLI works as a deployer uses it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from harness.clients import WebUser
from harness.servers import LiveServer

KINDS = {"build_finished": {"per": "build", "title": "Build {build} finished", "body": "{result}"}}


def flask(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``flask --app wsgi …`` against the server's database, as a deployer runs it."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def api_server(sqlite_env, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("api")
    kinds = tmp / "kinds.json"
    kinds.write_text(json.dumps(KINDS))
    env = {**sqlite_env, "NOTIFICATION_KINDS_FILE": str(kinds)}
    live = LiveServer(env, tmp / "gunicorn.log").start()
    yield live, env
    live.stop()


def test_schemathesis_finds_no_server_error_and_no_answer_off_the_schema(api_server):
    live, env = api_server
    WebUser(live.url, "apiuser").register()
    created = flask(env, "keys", "create", "fuzzer", "--kinds", "build_finished")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip().splitlines()[-1]
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{live.url}/api/v1/openapi.json",
            # Every check but "valid data is accepted": a valid-looking body naming a stranger or
            # an undeclared kind is rightly refused (422).
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--header",
            f"Authorization: Bearer {token}",
            "--max-examples",
            "100",
            "--seed",
            "1",
            "--request-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_keys_are_created_listed_and_revoked_from_the_cli(api_server):
    live, env = api_server
    WebUser(live.url, "cliuser").register()
    created = flask(env, "keys", "create", "ci-bot", "--kinds", "build_finished", "--to", "cliuser")
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("tid_") and "\n" not in token, "the secret alone on stdout"
    assert flask(env, "keys", "create", "x", "--kinds", "no_such_kind").returncode != 0
    assert flask(env, "keys", "create", "ci-bot", "--kinds", "build_finished").returncode != 0, (
        "names are unique"
    )
    body = {"to": "cliuser", "kind": "build_finished", "data": {"build": "1", "result": "ok"}}
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.post(f"{live.url}/api/v1/notifications", json=body, headers=headers).status_code == 201
    listing = flask(env, "keys", "list").stdout
    assert "ci-bot" in listing and "last used=never" not in listing.split("ci-bot")[1].splitlines()[0]
    assert flask(env, "keys", "revoke", "ci-bot").returncode == 0
    assert httpx.post(f"{live.url}/api/v1/notifications", json=body, headers=headers).status_code == 401
