"""Nothing is lost when Redis restarts or a gunicorn worker is stopped."""

from __future__ import annotations

import signal
import time

import pytest

from harness.clients import WebUser
from harness.servers import LiveServer, RedisServer


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    """A Redis this module may kill."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def server(server_env, own_redis, tmp_path_factory):
    """gunicorn on the killable Redis. Its workers close their streams when told to stop (the
    path these tests are about) rather than carry them to a sibling (test_deploys.py)."""
    env = {**server_env, "REDIS_URL": own_redis.url, "SSE_HANDOFF_SECONDS": "0"}
    live = LiveServer(env, tmp_path_factory.mktemp("log") / "gunicorn.log").start()
    yield live
    live.stop()


def connected_stream(user: WebUser, last_id: str | None = None):
    s = user.stream(headers={"Last-Event-ID": last_id} if last_id else None, timeout=15)
    assert s.status == 200
    s.next_block()  # retry:
    return s


def test_message_sent_while_redis_is_down_arrives_after_it_returns(make_user, own_redis, server):
    alice, bob = make_user("alice"), make_user("bob")
    s = connected_stream(bob)
    assert s.next_block().comments == ["connected"]

    own_redis.kill()
    started = time.monotonic()
    r = alice.send(bob.username, "sent during the outage")
    assert r.status_code == 302, "sending works without Redis"
    assert time.monotonic() - started < 5
    assert "could not publish" in server.log()
    own_redis.start()

    event = s.next_event("unread_message_count")
    assert event.json["data"] == 1
    assert s.next_event("new_message").json["data"]["preview"] == "sent during the outage"
    # And live delivery works again on the new connection.
    alice.send(bob.username, "after")
    assert s.next_event("unread_message_count").json["data"] == 2
    s.close()


def test_sigterm_ends_streams_promptly_and_clients_resume_with_nothing_lost(make_user, server):
    alice, bob = make_user("alice"), make_user("bob")
    alice.send(bob.username, "before")
    s = connected_stream(bob)
    last_id = s.next_event("unread_message_count").id
    s.next_event("new_message")
    s.next_event("conversation")
    s.sock.settimeout(4)

    ended_after = None
    for worker in server.workers():
        worker.send_signal(signal.SIGTERM)
        started = time.monotonic()
        # Our stream's worker ends it at once; another worker's stop leaves it beating (1 s).
        while time.monotonic() - started < 3:
            block = s.next_block()
            if block is None:
                ended_after = time.monotonic() - started
                break
            assert block.event is None  # only keepalives until the end
        if ended_after is not None:
            break
    assert ended_after is not None, "the stream ended when its worker was told to stop"
    assert ended_after < 3, f"ended after {ended_after:.1f}s, not after graceful_timeout"

    alice.send(bob.username, "while reconnecting")
    resumed = connected_stream(bob, last_id)
    event = resumed.next_event("unread_message_count")
    assert int(event.id) > int(last_id) and event.json["data"] == 2
    assert resumed.next_event("new_message").json["data"]["preview"] == "while reconnecting"
    resumed.close()
