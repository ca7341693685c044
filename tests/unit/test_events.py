"""The notification value object and its wire formats."""

import json
import uuid

import pytest

from flask_tidings.events import Event, channel_for, user_id_from_channel
from flask_tidings.kinds import Kind, Kinds, NotificationRefused
from flask_tidings.live import Unseen


def test_sse_frame_is_exactly_the_contract():
    event = Event(name="unread_message_count", data=3, timestamp=1763700000.123, id=42)
    assert str(event) == (
        "id: 42\n"
        "event: unread_message_count\n"
        'data: {"id": 42, "name": "unread_message_count", "data": 3, "timestamp": 1763700000.123}\n\n'
    )


def test_event_without_id_has_no_id_line():
    event = Event(name="announcement", data="maintenance at 5", timestamp=1.5)
    frame = str(event)
    assert not frame.startswith("id:") and "\nid:" not in frame
    assert json.loads(frame.split("data: ", 1)[1]) == {
        "name": "announcement",
        "data": "maintenance at 5",
        "timestamp": 1.5,
    }


def test_newlines_in_data_stay_on_one_data_line():
    frame = str(Event(name="x", data="line1\nline2\r\n", timestamp=1.0, id=1))
    assert frame.count("\n") == 4 and frame.endswith("\n\n")


def test_from_json_round_trip_and_defaults():
    event = Event(name="task_progress", data={"task_id": "t1", "progress": 5}, timestamp=2.0, id=7)
    assert Event.from_json(event.to_json()) == event
    bare = Event.from_json('{"name": "announcement", "data": "hi"}')
    assert bare.id is None and bare.data == "hi" and bare.timestamp > 1_700_000_000


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"text"',
        b"{}",
        b'{"name": ""}',
        b'{"name": 5}',
        b'{"name": "a\\nb"}',
        b'{"name": "x", "id": "7"}',
        b'{"name": "x", "id": true}',
        b'{"name": "x", "data": NaN}',
    ],
)
def test_from_json_refuses_what_is_not_a_notification(raw):
    with pytest.raises(ValueError):
        Event.from_json(raw)


def test_channels_and_keys():
    assert channel_for(12) == "notifications:12"
    # Any kind of user id: the channel ends with its string, which names the user in the engine.
    assert user_id_from_channel("notifications:12") == "12"
    assert channel_for("cd3bfb0a") == "notifications:cd3bfb0a"
    assert user_id_from_channel("notifications:cd3bfb0a") == "cd3bfb0a"
    uid = uuid.UUID("9f1c5b6e-0d6a-4a55-8c0e-6f1b2b3c4d5e")
    assert user_id_from_channel(channel_for(uid)) == str(uid)
    assert user_id_from_channel("notifications:") is None and user_id_from_channel("other:1") is None
    kinds = Kinds([Kind("unread_message_count"), Kind("task_progress", per="task_id")])
    assert kinds.key_of("unread_message_count", 3) == "unread_message_count"
    assert kinds.key_of("task_progress", {"task_id": "ab"}) == "task_progress:ab"
    assert kinds.key_of("task_progress", {"other": 1}) == "task_progress"
    assert kinds.key_of("undeclared", {"task_id": "ab"}) == "undeclared"
    raw = '{"name": "task_progress", "data": {"task_id": "ab"}}'
    assert Event.from_json(raw, kinds.key_of).key == "task_progress:ab"
    assert kinds.for_page() == {"unread_message_count": None, "task_progress": "task_id"}


def test_the_reserved_control_name_cannot_be_declared_or_sent():
    with pytest.raises(ValueError):
        Kinds([Kind("session_ended")])
    with pytest.raises(NotificationRefused, match="reserved"):
        Kinds().declared("session_ended")
    with pytest.raises(NotificationRefused, match="not a declared"):
        Kinds([Kind("a")]).declared("b")


def test_unseen_sends_each_id_once_and_nothing_below_the_cursor():
    unseen = Unseen(floor=5)
    e = lambda i, name="n": Event(name=name, data=i, timestamp=1.0, id=i)  # noqa: E731
    assert unseen.frames([e(4), e(6)]) == e(6).wire
    assert unseen.frames([e(6)]) == b"", "replayed then live: not twice"
    assert unseen.frames([e(7, "other"), e(6)]) == e(7, "other").wire
    ephemeral = Event(name="announcement", data="hi", timestamp=1.0)
    assert unseen.frames([ephemeral, ephemeral]) == ephemeral.wire * 2
