"""Streams carried from a stopping worker to its successor: the browser's connection never closes.

Both "workers" are ``Streams`` in this process, joined by a real ``Inbox`` and ``Successors``
on a Unix socket in a temporary folder; each browser is the other end of a socketpair.
"""

from __future__ import annotations

import json
import os
import socket
import sys

import gevent
import gevent.socket
import gevent.subprocess
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_tidings import succession
from flask_tidings.fanout import Subscription
from flask_tidings.live import CARRIED, Streams, Unseen
from flask_tidings.succession import Inbox, Successors
from tests.unit.test_live import Store, ev, open_stream


class Hub:
    """Subscriptions as a worker's hub keeps them: offered to, closed on shutdown."""

    def __init__(self) -> None:
        self.subs: list[Subscription] = []

    def subscribe(self, user_id: int, login: str | None = None) -> Subscription:
        sub = Subscription(user_id, login)
        self.subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self.subs:
            self.subs.remove(sub)

    def offer(self, user_id: int, event) -> None:
        for sub in list(self.subs):
            if sub.user_id == str(user_id):  # a subscription names its user by str(id)
                sub.offer(event)

    def shutdown(self) -> None:
        for sub in list(self.subs):
            sub.close()


class Worker:
    """One worker's streams, hub and inbox."""

    def __init__(self, folder, name: str, store: Store, logins=None) -> None:
        self.hub = Hub()
        self.streams = Streams(self.hub, store.read, heartbeat=60, handoff_seconds=2, open_logins=logins)
        self.owners: list = []
        self.accepting = True
        self.inbox = Inbox(folder, name, lambda: self.accepting, self.owners.append).open()

    def open(self, user_id: int, login: str = "token-a"):
        return open_stream(self.streams, self.hub.subscribe(user_id, login))

    def stop(self) -> None:
        self.inbox.close()
        self.streams.stop()


@pytest.fixture
def store():
    return Store()


@pytest.fixture
def workers(tmp_path, store):
    made: list[Worker] = []

    def make(name: str, logins=None) -> Worker:
        worker = Worker(tmp_path, name, store, logins)
        made.append(worker)
        succession.receive(CARRIED, worker.streams.carry_in)  # the newest worker's app registers
        return worker

    yield make
    for worker in made:
        worker.stop()


def carry(old: Worker, tmp_path, newer: set[int]) -> None:
    old.inbox.close()
    successors = Successors(tmp_path, int(old.inbox.path.stem), newer=lambda: newer)
    try:
        old.streams.drain(successors)
    finally:
        successors.close()


def test_carried_streams_stay_open_and_get_what_they_missed_once_then_live_events(workers, store, tmp_path):
    old = workers("1")
    tabs = [old.open(7) for _ in range(2)] + [old.open(8)]
    for _, peer in tabs:
        assert peer.frames(1) == [b"retry: 3000\n\n"]
    old.hub.offer(7, ev(5))
    for _, peer in tabs[:2]:
        assert peer.frames(1) == [ev(5).wire]
    new = workers("2")
    # Stored while the streams travel: the successor reads it from the store, once.
    store.events[7] = [ev(5), ev(6, "new_message", {"from": "ann"})]

    carry(old, tmp_path, newer={2})

    assert len(old.streams) == 0
    gevent.sleep(0.2)  # the successor subscribes and re-reads the store
    assert len(new.streams) == 3 and new.owners == [new.streams]
    for _, peer in tabs[:2]:
        assert peer.frames(1) == [ev(6, "new_message", {"from": "ann"}).wire]
    new.hub.offer(7, ev(9))
    new.hub.offer(8, ev(10))
    for _, peer in tabs[:2]:
        assert peer.frames(1) == [ev(9).wire], "nothing the stream had seen came again"
    assert tabs[2][1].frames(1) == [ev(10).wire]
    # The old worker's hub shutting down closes nothing that was carried.
    old.hub.shutdown()
    new.hub.offer(8, ev(11))
    assert tabs[2][1].frames(1) == [ev(11).wire]


def test_a_stream_whose_login_ended_on_the_way_is_closed_on_arrival(workers, store, tmp_path):
    old = workers("1")
    (_, kept), (_, revoked) = old.open(7, "still-in"), old.open(7, "logged-out")
    for peer in (kept, revoked):
        peer.frames(1)
    new = workers("2", logins=lambda tokens: {t for t in tokens if t == "still-in"})
    carry(old, tmp_path, newer={2})
    assert revoked.at_eof()
    new.hub.offer(7, ev(3))
    assert kept.frames(1) == [ev(3).wire]


def test_a_successor_that_is_stopping_too_refuses_and_the_streams_close_with_a_retry(
    workers, store, tmp_path
):
    old = workers("1")
    _, peer = old.open(7)
    peer.frames(1)
    stopping = workers("2")
    stopping.accepting = False
    carry(old, tmp_path, newer={2})
    (retry,) = peer.frames(1)
    assert retry.startswith(b"retry: ") and peer.at_eof()
    assert len(stopping.streams) == 0


def test_a_stream_behind_on_its_writes_is_closed_not_carried(workers, store, tmp_path):
    old = workers("1")
    stream, peer = old.open(7)
    stream.write(b"x" * (4 << 20))  # far more than the socket buffers: the rest waits in a queue
    assert not stream.carriable
    new = workers("2")
    carry(old, tmp_path, newer={2})
    assert len(new.streams) == 0 and stream.closed


def test_successors_wait_for_each_newer_worker_to_listen_or_stop(tmp_path):
    Inbox(tmp_path, "2", lambda: True, lambda owner: None).open()
    (tmp_path / "3.stopped").touch()
    assert Successors(tmp_path, 1, newer=lambda: {2, 3}).wait(5)
    waiting = Successors(tmp_path, 1, newer=lambda: {2, 4})
    with gevent.Timeout(2):
        assert waiting.wait(0.3), "worker 4 never came; worker 2 listens"


def test_a_worker_alone_does_not_wait(tmp_path):
    with gevent.Timeout(1):
        assert not Successors(tmp_path, 1, newer=lambda: set()).wait(30)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    header=st.one_of(
        st.binary(max_size=200),
        st.builds(
            lambda kind, states: json.dumps({"kind": kind, "states": states}).encode(),
            st.sampled_from(["test.kind", "other"]),
            st.lists(st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5)), max_size=3),
        ),
    )
)
def test_a_malformed_packet_is_refused_or_dropped_and_the_inbox_goes_on(tmp_path, header):
    taken: list = []
    succession.receive("test.kind", lambda items: taken.append(items))
    inbox = Inbox(tmp_path, "9", lambda: True, lambda owner: None).open()
    try:
        a, b = socket.socketpair()
        sender = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sender.settimeout(5)
        sender.connect(str(inbox.path))
        socket.send_fds(sender, [header or b" "], [a.fileno()])
        first = sender.recv(1)
        assert first in (b"0", b"1")
        # A well-formed packet after it is still taken.
        good = json.dumps({"kind": "test.kind", "states": [{}]}).encode()
        socket.send_fds(sender, [good], [b.fileno()])
        assert sender.recv(1) == b"1"
        assert len(taken) == (first == b"1") + 1
        for items in taken:
            for _, fd in items:
                os.close(fd)
        sender.close()
        a.close()
        b.close()
    finally:
        inbox.close()


def test_a_process_that_is_not_a_sibling_worker_is_refused(tmp_path):
    taken: list = []
    succession.receive("test.kind", taken.append)
    inbox = Inbox(tmp_path, "9", lambda: True, lambda owner: None).open()
    stranger = f"""
import json, socket
a, b = socket.socketpair()
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.settimeout(5)
s.connect({str(inbox.path)!r})
try:
    socket.send_fds(s, [json.dumps({{"kind": "test.kind", "states": [{{}}]}}).encode()], [a.fileno()])
    print(repr(s.recv(1)))
except OSError as exc:
    print("refused", exc)
"""
    try:
        out = gevent.subprocess.run(
            [sys.executable, "-c", stranger], capture_output=True, text=True, timeout=20
        )
        gevent.sleep(0.1)
    finally:
        inbox.close()
    assert out.stdout.strip() in (
        "b''",
        "refused [Errno 32] Broken pipe",
        "refused [Errno 104] Connection reset by peer",
    ), out
    assert taken == []


def test_an_adopter_that_fails_closes_what_it_was_given(tmp_path):
    def broken(items):
        raise RuntimeError("nothing here takes streams")

    succession.receive("test.broken", broken)
    inbox = Inbox(tmp_path, "9", lambda: True, lambda owner: None).open()
    try:
        browser, ours = socket.socketpair()
        sender = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sender.connect(str(inbox.path))
        socket.send_fds(
            sender, [json.dumps({"kind": "test.broken", "states": [{}]}).encode()], [ours.fileno()]
        )
        assert sender.recv(1) == b"1"
        ours.close()  # the sender's copy goes, as after any carry
        peer = gevent.socket.socket(fileno=browser.detach())
        with gevent.Timeout(5):
            assert peer.recv(1) == b"", "the inbox closed its copy: the browser sees the end and reconnects"
        sender.close()
    finally:
        inbox.close()


def test_unseen_survives_the_journey():
    unseen = Unseen(4)
    assert unseen.admit(ev(7)) and unseen.admit(ev(9, "new_message"))
    again = Unseen.restore(json.loads(json.dumps(unseen.state())))
    assert not again.admit(ev(7)) and not again.admit(ev(3, "other")) and again.admit(ev(8, "other"))
