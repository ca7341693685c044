"""/stream on a real gunicorn with gevent workers and real Redis."""

from __future__ import annotations

import json
import time

import pytest
import redis

from harness.clients import SSE, registered


def open_stream(user, **kwargs) -> SSE:
    """A stream past its ``retry:`` and initial replay marker."""
    s = user.stream(**kwargs)
    assert s.status == 200
    retry = s.next_block()
    assert retry.retry == "500"
    return s


def test_headers_and_retry(make_user):
    bob = make_user("bob")
    s = bob.stream()
    assert s.status == 200
    assert s.headers["content-type"].startswith("text/event-stream")
    assert s.headers["cache-control"] == "no-cache"
    assert s.headers["x-accel-buffering"] == "no"
    assert s.next_block().retry == "500"
    s.close()


def test_live_delivery_of_a_sent_message(make_user):
    alice, bob = make_user("alice"), make_user("bob")
    s = open_stream(bob)
    assert alice.send(bob.username, "hello <b>bob</b>").status_code == 302
    count = s.next_event("unread_message_count")
    assert count.json["data"] == 1 and count.id == str(count.json["id"])
    toast = s.next_event("new_message")
    assert toast.json["data"]["sender"] == alice.username
    assert toast.json["data"]["preview"] == "hello <b>bob</b>"
    s.close()


def test_fresh_stream_without_cursor_gets_current_state(make_user):
    alice, bob = make_user("alice"), make_user("bob")
    alice.send(bob.username, "one")
    alice.send(bob.username, "two")
    s = open_stream(bob)
    first = s.next_event()
    assert first.event == "unread_message_count" and first.json["data"] == 2
    s.close()


def test_resume_with_last_event_id_header_and_query(make_user):
    alice, bob = make_user("alice"), make_user("bob")
    alice.send(bob.username, "one")
    events = [e for e in bob.http.get("/notifications?since=0").json()]
    last = max(e["id"] for e in events)
    alice.send(bob.username, "two")

    for kwargs in ({"headers": {"Last-Event-ID": str(last)}}, {"path": f"/stream?last_event_id={last}"}):
        s = open_stream(bob, **kwargs)
        got = [s.next_event(), s.next_event(), s.next_event()]
        assert all(int(e.id) > last for e in got)
        assert {e.event for e in got} == {"unread_message_count", "new_message", "conversation"}
        assert got[0].json["data"] == 2
        s.close()

    # The header wins over the query string: only what came after the header's id is replayed.
    s = open_stream(bob, path="/stream?last_event_id=0", headers={"Last-Event-ID": str(last)})
    replayed = [s.next_event(), s.next_event(), s.next_event()]
    assert all(int(e.id) > last for e in replayed)
    assert s.next_block().comments == ["keepalive"], "and nothing more"
    # ...and live events follow.
    alice.send(bob.username, "three")
    assert s.next_event("unread_message_count").json["data"] == 3
    s.close()


def test_replay_and_live_never_send_an_id_twice(make_user):
    alice, bob = make_user("alice"), make_user("bob")
    alice.send(bob.username, "one")
    s = open_stream(bob, headers={"Last-Event-ID": "0"})
    seen = [s.next_event().id for _ in range(3)]
    alice.send(bob.username, "two")
    seen += [s.next_event().id for _ in range(3)]
    assert len(seen) == len(set(seen)) == 6
    s.close()


def test_isolation_whatever_the_query_or_headers_say(make_user):
    alice, bob, eve = make_user("alice"), make_user("bob"), make_user("eve")
    tampered = open_stream(
        eve,
        path=f"/stream?user={bob.username}&user_id=1&channel=notifications:1&last_event_id=0",
        headers={"X-User-Id": "1", "Last-Event-ID": "0"},
    )
    alice.send(bob.username, "secret for bob")
    alice.send(eve.username, "for eve")
    blocks = []
    while not any(b.comments == ["keepalive"] for b in blocks):  # one idle heartbeat after eve's events
        blocks.append(tampered.next_block())
    previews = [b.json["data"]["preview"] for b in blocks if b.event == "new_message"]
    assert previews == ["for eve"]
    assert not any("secret" in (b.data or "") for b in blocks)
    counts = [b.json["data"] for b in blocks if b.event == "unread_message_count"]
    assert counts == [1], "eve's own count only"
    tampered.close()


def test_heartbeat_comments_on_idle_streams(make_user):
    bob = make_user("bob")
    s = open_stream(bob)
    s.next_block()  # ": connected"
    started = time.monotonic()
    beat = s.next_block()
    assert beat.comments == ["keepalive"] and beat.event is None
    assert time.monotonic() - started < 3, "SSE_HEARTBEAT_SECONDS=1"
    s.close()


def test_anonymous_stream_is_401_json(server):
    s = SSE.open(server.url, "/stream", {}, 5)
    assert s.status == 401 and s.headers["content-type"] == "application/json"
    s.close()


def test_logout_ends_that_logins_streams_only(make_user, server):
    bob = make_user("bob")
    other_login = type(bob)(server.url, bob.username, bob.password).login()
    mine, other = open_stream(bob), open_stream(other_login)
    mine.next_block()
    other.next_block()
    mine.sock.settimeout(3)  # one heartbeat interval is 1 s
    assert bob.logout().status_code == 302
    while (block := mine.next_block()) is not None:
        assert block.event is None
    # The other login's stream goes on and still gets events.
    other.next_block()  # a keepalive at least
    assert bob.http.get("/stream").status_code == 401
    other.close()
    other_login.close()


def test_psubscribe_sees_json_and_raw_publish_reaches_the_stream(make_user, redis_url):
    alice, bob = make_user("alice"), make_user("bob")
    r = redis.Redis.from_url(redis_url)
    watcher = r.pubsub()
    watcher.psubscribe("notifications:*")
    assert watcher.get_message(timeout=2)["type"] == "psubscribe"
    s = open_stream(bob)
    s.next_block()
    alice.send(bob.username, "watched")
    msg = watcher.get_message(timeout=5)
    while msg is not None and msg["type"] != "pmessage":
        msg = watcher.get_message(timeout=5)
    body = json.loads(msg["data"])
    assert set(body) == {"id", "name", "data", "timestamp"} and body["name"] == "unread_message_count"
    channel = msg["channel"].decode()
    s.next_event("unread_message_count")
    s.next_event("new_message")

    # An operator's raw PUBLISH: forwarded without an id line.
    r.publish(channel, "this is not json")
    r.publish(channel, '{"no": "name"}')
    r.publish(channel, '{"name":"announcement","data":"maintenance at 17:00"}')
    announcement = s.next_event("announcement")
    assert announcement.id is None
    assert announcement.json["data"] == "maintenance at 17:00"
    watcher.close()
    s.close()


def test_forty_streams_cost_at_most_one_redis_connection_per_worker(make_user, redis_url, server):
    r = redis.Redis.from_url(redis_url)
    users = [make_user("many") for _ in range(8)]
    streams = []
    for i in range(40):
        s = open_stream(users[i % 8])
        s.next_block()
        streams.append(s)
    hubs = [c for c in r.client_list() if c.get("name") == "tidings-hub"]
    assert 1 <= len(hubs) <= 2, hubs  # WEB_CONCURRENCY=2
    channels = {ch.decode() for ch in r.pubsub_channels("notifications:*")}
    numsub = dict(r.pubsub_numsub(*channels))
    assert all(count <= 2 for count in numsub.values()), "one subscription per worker, not per tab"
    for s in streams:
        s.close()


def test_idle_streams_hold_no_database_connection(make_user):
    # More streams than the PostgreSQL pool has connections (10 + 20 overflow per worker).
    alice, bob = make_user("alice"), make_user("bob")
    streams = []
    for _ in range(70):
        s = open_stream(bob)
        s.next_block()
        streams.append(s)
    started = time.monotonic()
    assert alice.send(bob.username, "still served").status_code == 302
    assert time.monotonic() - started < 5, "the send did not wait for a pooled connection"
    for s in streams:
        assert s.next_event("unread_message_count").json["data"] == 1
        s.close()


@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_non_gevent_workers_are_refused_at_boot(server_env, worker_class, tmp_path):
    import os
    import subprocess

    from harness.servers import BIN, ROOT, free_port

    env = {**os.environ, **server_env, "PORT": str(free_port())}
    proc = subprocess.run(
        [BIN / "gunicorn", "-c", "gunicorn.conf.py", "-k", worker_class, "wsgi:app"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "Tidings needs its gevent worker class" in proc.stderr
    assert "Worker failed to boot" in proc.stderr


def test_a_vanished_client_releases_its_subscription(make_user, redis_url, server_env):
    from harness.clients import user_id
    from harness.servers import wait_until

    r = redis.Redis.from_url(redis_url)
    bob = make_user("bob")
    channel = f"notifications:{user_id(server_env, bob.username)}"

    def subscribers() -> int:
        return dict(r.pubsub_numsub(channel))[channel.encode()]

    s = open_stream(bob)
    s.next_block()
    assert subscribers() == 1
    s.sock.close()  # the tab vanishes without a goodbye
    # The stream's read watcher sees the connection end; the hub unsubscribes.
    wait_until(lambda: subscribers() == 0, 5, "the hub to release the vanished stream")


def test_open_streams_do_not_take_the_workers_request_slots(server_env, tmp_path):
    from harness.servers import LiveServer

    env = {**server_env, "WEB_CONCURRENCY": "1", "WORKER_CONNECTIONS": "3"}
    live = LiveServer(env, tmp_path / "gunicorn.log").start()
    try:
        alice, bob = registered(live.url, "slots_a"), registered(live.url, "slots_b")
        streams = []
        for _ in range(12):  # four times the requests the worker serves at once
            s = open_stream(bob)
            s.next_block()
            streams.append(s)
        assert alice.send(bob.username, "still served").status_code == 302
        for s in streams:
            assert s.next_event("unread_message_count").json["data"] == 1
            s.close()
        alice.close()
        bob.close()
    finally:
        live.stop()


def test_an_unreadable_store_and_a_full_worker_answer_503_json_then_recover(server_env, tmp_path, expect_log):
    import sqlalchemy as sa

    expect_log(r"could not read the notification store for a stream")
    from harness.servers import LiveServer, wait_until

    def rename(old: str, new: str) -> None:
        engine = sa.create_engine(server_env["DATABASE_URL"])
        with engine.begin() as conn:
            conn.execute(sa.text(f"ALTER TABLE {old} RENAME TO {new}"))
        engine.dispose()

    env = {**server_env, "WEB_CONCURRENCY": "1", "MAX_STREAMS_PER_WORKER": "2"}
    live = LiveServer(env, tmp_path / "gunicorn.log").start()
    try:
        bob = registered(live.url, "full_b")

        rename("notification", "notification_away")
        try:
            broken = bob.http.get("/stream")
            assert broken.status_code == 503 and broken.headers["retry-after"] == "5"
            assert broken.json()["error"] == "notifications are unavailable for a moment"
        finally:
            rename("notification_away", "notification")

        first, second = open_stream(bob), open_stream(bob)
        refused = bob.http.get("/stream")
        assert refused.status_code == 503
        assert "try again" in refused.json()["error"]
        first.close()

        def opens() -> bool:
            s = bob.stream()
            s.close()
            return s.status == 200

        wait_until(opens, 5, "a slot to free up once a tab closes")
        second.close()
        bob.close()
    finally:
        live.stop()


def test_a_client_version_header_is_not_taken_for_http2(make_user):
    # Over HTTP/1.1 a "Version: 2" header becomes HTTP_VERSION in the environ; the protocol is
    # SERVER_PROTOCOL's to say. The stream opens, and the fixture fails the test on a CRITICAL line.
    alice, bob = make_user("alice"), make_user("bob")
    s = open_stream(bob, headers={"Version": "2"})
    assert alice.send(bob.username, "still HTTP/1.1").status_code == 302
    assert s.next_event("unread_message_count").json["data"] == 1
    s.close()
