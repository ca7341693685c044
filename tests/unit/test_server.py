"""The worker class's per-request logic, with a real gunicorn config and a socketpair."""

from __future__ import annotations

import logging
import os
import socket

import pytest
from gunicorn.config import Config
from gunicorn.workers.base_async import ALREADY_HANDLED

from flask_tidings.gunicorn import ENVIRON_KEY, Handover, HandoverRefused, StreamWorker


class Owner:
    def __init__(self) -> None:
        self.drained = 0

    def drain(self) -> None:
        self.drained += 1


class Taken:
    """What an adopter returns: it owns the descriptor."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.closed = False

    def close(self) -> None:
        self.closed = True
        self.sock.close()


class Body:
    """A middleware's own response iterable, recording how it was consumed."""

    def __init__(self, inner) -> None:
        self.inner, self.iterated, self.closed = inner, False, False

    def __iter__(self):
        yield from self.inner
        self.iterated = True

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def worker():
    cfg = Config()
    cfg.set("max_requests", 3)
    cfg.set("max_requests_jitter", 0)
    w = StreamWorker(0, os.getppid(), [], None, 30, cfg, logging.getLogger("test"))
    yield w
    w.tmp.close()


@pytest.fixture
def conn():
    a, b = socket.socketpair()
    yield a, b
    for s in (a, b):
        s.close()


def environ(sock, protocol="HTTP/1.1", **extra):
    return {"gunicorn.socket": sock, "SERVER_PROTOCOL": protocol, "PATH_INFO": "/", **extra}


def test_ordinary_requests_count_toward_max_requests(worker, conn):
    def app(env, start_response):
        return [b"ok"]

    for _ in range(2):
        assert worker._serve(app, environ(conn[0]), None) == [b"ok"]
    assert worker.alive
    worker._serve(app, environ(conn[0]), None)
    assert not worker.alive and worker.requests_served == 3


def test_a_taken_connection_is_not_counted_and_its_wrapped_body_is_run_and_closed(worker, conn):
    owner, bodies, taken = Owner(), [], []

    def app(env, start_response):
        taken.append(env[ENVIRON_KEY].take(owner, Taken))
        bodies.append(Body([]))
        return bodies[0]

    for _ in range(5):
        a, b = socket.socketpair()
        bodies.clear()
        assert worker._serve(app, environ(a), None) is ALREADY_HANDLED
        assert bodies[0].iterated and bodies[0].closed
        b.close()
    assert worker.alive and worker.requests_served == 0
    assert worker.owners == {owner}
    for t in taken:
        t.close()
    with pytest.raises(StopIteration):
        worker.is_already_handled(ALREADY_HANDLED)
    assert worker.is_already_handled([]) is False


def test_a_failure_after_the_take_closes_what_was_taken(worker, conn):
    taken = []

    def app(env, start_response):
        taken.append(env[ENVIRON_KEY].take(Owner(), Taken))
        raise RuntimeError("boom")

    assert worker._serve(app, environ(conn[0]), None) is ALREADY_HANDLED
    assert taken[0].closed


def test_a_failure_before_any_take_is_gunicorns_to_answer(worker, conn):
    def app(env, start_response):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        worker._serve(app, environ(conn[0]), None)


@pytest.mark.parametrize(
    ("env", "refused"),
    [
        ({"SERVER_PROTOCOL": "HTTP/1.1", "HTTP_VERSION": "2"}, None),  # a client header, not HTTP/2
        ({"SERVER_PROTOCOL": "HTTP/1.0"}, None),
        ({"SERVER_PROTOCOL": "HTTP/2.0", "HTTP_VERSION": "2"}, "HTTP/1.1"),
    ],
)
def test_the_protocol_check_reads_server_protocol(worker, conn, env, refused):
    handover = Handover(worker, {"gunicorn.socket": conn[0], **env})
    if refused is None:
        assert handover.refusal is None
    else:
        assert refused in handover.refusal
        with pytest.raises(HandoverRefused):
            handover.take(Owner(), Taken)


def test_a_stopping_worker_refuses_to_hand_over(worker, conn):
    worker.alive = False
    handover = Handover(worker, environ(conn[0]))
    assert "restarting" in handover.refusal
    with pytest.raises(HandoverRefused):
        handover.take(Owner(), Taken)
    assert conn[0].fileno() != -1  # nothing was detached
