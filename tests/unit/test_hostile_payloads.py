"""Whatever arrives on a channel, the hub's listener goes on: the real parse/dispatch path."""

from __future__ import annotations

import json

import gevent
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flask_tidings.events import Event
from flask_tidings.hub import Hub
from tests.unit.test_hub import ScriptedPubSub, ev, publish

DEEP = 100_000
HOSTILE = {
    "infinite number": b'{"name":"announcement","data":1e999}',
    "NaN": b'{"name":"announcement","data":NaN}',
    "deep nesting": b'{"name":"announcement","data":' + b"[" * DEEP + b"]" * DEEP + b"}",
    "deep bare array": b"[" * DEEP + b"]" * DEEP,
    "1 MB string": b'{"name":"announcement","data":"' + b"x" * 1_000_000 + b'"}',
    "invalid UTF-8": b'{"name":"announcement","data":"\xff\xfe"}',
    "not an object": b"[1, 2, 3]",
    "a bare string": b'"hello"',
    "no name": b'{"data": 1}',
    "a numeric name": b'{"name": 5}',
    "a name with a newline": b'{"name": "a\\nb", "data": 1}',
    "a string id": b'{"name": "announcement", "id": "7"}',
    "a huge id": b'{"name": "announcement", "id": 1' + b"0" * 5000 + b"}",
    "empty": b"",
}


@pytest.fixture
def hub():
    conns: list[ScriptedPubSub] = []

    def connect():
        conns.append(ScriptedPubSub())
        return conns[-1]

    hub = Hub(connect, ping_interval=60, subscribe_timeout=1, min_backoff=0.01, max_backoff=0.05)
    hub.conns = conns
    yield hub
    hub.stop()


@pytest.mark.parametrize("payload", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_message_is_dropped_with_one_line_and_the_next_arrives(hub, payload, caplog):
    sub = hub.subscribe(1)
    publish(hub.conns[0], 1, payload)
    publish(hub.conns[0], 1, ev(5))
    assert sub.take_pending() == [ev(5)]
    assert len([r for r in caplog.records if "dropped" in r.getMessage()]) == 1
    assert all(len(r.getMessage()) < 1000 for r in caplog.records), "log lines stay short"


def test_a_listener_that_dies_anyway_is_restarted_and_streams_reread_the_store(hub, monkeypatch):
    class Boom(BaseException):
        pass

    sub = hub.subscribe(1)
    real = hub.handle_reply

    def explode(reply):
        monkeypatch.setattr(hub, "handle_reply", real)
        raise Boom("not even an Exception")

    monkeypatch.setattr(hub, "handle_reply", explode)
    publish(hub.conns[0], 1, ev(1))
    gevent.sleep(0.1)
    assert sub.needs_reread, "the stream re-reads what it may have missed"
    publish(hub.conns[-1], 1, ev(2))
    assert ev(2) in sub.take_pending()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
messages = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["announcement", "unread_message_count"]), st.text(max_size=10))},
    optional={
        "data": json_values,
        "id": st.one_of(st.integers(), st.text(max_size=5), st.none(), st.floats()),
        "timestamp": st.one_of(st.floats(), st.integers(), st.text(max_size=5)),
    },
).map(lambda d: json.dumps(d, allow_nan=True).encode())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.one_of(messages, st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode()))
)
def test_any_payload_is_delivered_or_dropped_and_delivery_goes_on(hub, payload):
    sub = hub.subscribe(1)
    hub.handle_reply([b"message", b"notifications:1", payload])
    for event in sub.take_pending():  # whatever was delivered can be sent as it is
        assert event.wire.startswith((b"id: ", b"event: "))
        json.loads(event.to_json())
    hub.handle_reply([b"message", b"notifications:1", ev(9).to_json().encode()])
    assert sub.take_pending() == [ev(9)]
    hub.unsubscribe(sub)


def test_parsing_refuses_what_cannot_be_sent_again():
    for payload in (HOSTILE["infinite number"], HOSTILE["deep nesting"], HOSTILE["NaN"]):
        with pytest.raises(ValueError):
            Event.from_json(payload)
