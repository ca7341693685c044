"""Conversations: sending, the list, the thread, read state per conversation, receipts, typing,
blocks, composing, the badge, and the seed's bugs shown absent."""

import json
import re
import types

import itsdangerous.timed
import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import Block, Message, Notification, User
from harness.clients import csrf_token
from tests.conftest import AuthActions

BADGE_RE = re.compile(r'<span id="message_count" data-unread-count class="(badge[^"]*)">(\d+)</span>')


def badge(client) -> tuple[str, int]:
    """(visibility, count) of the navbar badge on the home page."""
    match = BADGE_RE.search(client.get("/").get_data(as_text=True))
    assert match, "the badge is always present for logged-in users"
    hidden = "invisible" in match.group(1).split()
    return ("hidden" if hidden else "visible"), int(match.group(2))


@pytest.fixture
def people(auth):
    return {name: auth.create(name) for name in ("alice", "bob", "carol")}


def send(client, recipient, text, **kw):
    return client.post(f"/messages/{recipient}", data={"message": text}, **kw)


def as_user(auth, name):
    auth.logout()
    auth.login(name)


def stored(app, name: str, user_id: int) -> list:
    with app.app_context():
        rows = db.session.scalars(
            sa.select(Notification).where(Notification.user_id == user_id, Notification.name == name)
        ).all()
        return [r.to_event().data for r in rows]


def listen(fake_redis, user_id):
    pubsub = fake_redis.pubsub()
    pubsub.subscribe(f"notifications:{user_id}")
    pubsub.get_message(timeout=1)
    return pubsub


def heard(pubsub) -> list[dict]:
    out = []
    while (msg := pubsub.get_message(timeout=0.2)) is not None:
        event = json.loads(msg["data"])
        if event["name"] != "session_ended":  # a logout's control message (as_user)
            out.append(event)
    return out


# -- sending ---------------------------------------------------------------------------------


def test_a_sent_message_opens_the_conversation_and_is_stored_as_typed(client, auth, people, app):
    auth.login("alice")
    r = send(client, "bob", "  hello bob\r\nsecond line  ")
    assert r.status_code == 302 and r.headers["Location"].startswith("/messages/bob#m")
    with app.app_context():
        msg = db.session.scalar(sa.select(Message))
        # Seed bug `form.body.data`: the field is `message`; stored trimmed, its line break kept.
        assert msg.body == "hello bob\nsecond line"
        assert (msg.sender.username, msg.recipient.username) == ("alice", "bob")
        assert msg.timestamp.tzinfo is not None and msg.read_at is None
    page = client.get("/messages/bob").get_data(as_text=True)
    assert '<p class="card-text mb-1 message-body" dir="auto">hello bob\nsecond line</p>' in page


def test_the_seed_send_route_still_works_and_leads_to_the_conversation(client, auth, people):
    auth.login("alice")
    assert client.get("/send_message/bob").headers["Location"] == "/messages/bob"
    r = client.post("/send_message/bob", data={"message": "via the old form"})
    assert r.status_code == 302 and r.headers["Location"].startswith("/messages/bob#m")
    assert "via the old form" in client.get("/messages/bob").get_data(as_text=True)


@pytest.mark.parametrize("text", ["", "     ", "x" * 2001])
def test_bad_bodies_are_refused_with_the_text_given_back_and_nothing_stored(client, auth, people, app, text):
    auth.login("alice")
    r = send(client, "bob", text)
    assert r.status_code == 400
    page = r.get_data(as_text=True)
    assert "Write something first." in page or "At most 2,000 characters." in page
    if text.strip():
        assert text in page, "the typed text comes back in the reply box"
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Message.id))) == 0
        assert db.session.scalar(sa.select(sa.func.count(Notification.id))) == 0


def test_two_thousand_characters_with_line_breaks_fit(client, auth, people, app):
    auth.login("alice")
    body = ("é" * 99 + "\r\n") * 20  # 2,000 characters as typed: the browser sends CRLF
    assert send(client, "bob", body).status_code == 302
    with app.app_context():
        assert len(db.session.scalar(sa.select(Message.body))) == 1999  # trimmed: the last break


def test_a_missing_field_is_a_form_error_and_json_clients_get_json(client, auth, people):
    auth.login("alice")
    r = client.post("/messages/bob", data={})
    assert r.status_code == 400 and b"Write something first." in r.data
    r = client.post("/messages/bob", data={}, headers={"Accept": "application/json"})
    assert r.status_code == 400 and r.get_json() == {"error": "Write something first."}
    r = send(client, "bob", "by script", headers={"Accept": "application/json"})
    assert r.status_code == 201 and isinstance(r.get_json()["id"], int)


def test_unknown_users_and_yourself_have_no_conversation(client, auth, people, app):
    auth.login("alice")
    assert client.get("/messages/nobody").status_code == 404
    assert send(client, "nobody", "hi").status_code == 404
    assert client.get("/send_message/nobody").status_code == 404
    assert client.get("/messages/alice").status_code == 404
    r = client.post("/send_message/alice", data={"message": "hi me"})
    assert "You cannot send a message to yourself." in client.get(r.headers["Location"]).get_data(
        as_text=True
    )
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Message.id))) == 0


def test_message_text_is_escaped_and_only_web_addresses_become_links(client, auth, people):
    auth.login("alice")
    send(
        client,
        "bob",
        "<script>alert(1)</script> see https://example.com/a?b=1&c=2). "
        "javascript:alert(2) //evil.example mailto:x@example.com",
    )
    page = client.get("/messages/bob").get_data(as_text=True)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
    assert (
        '<a href="https://example.com/a?b=1&amp;c=2" rel="noopener nofollow ugc" target="_blank">'
        "https://example.com/a?b=1&amp;c=2</a>)." in page
    )
    assert page.count('rel="noopener nofollow ugc"') == 1, "javascript:, //host and mailto: stay text"


# -- the list, the thread, read state ----------------------------------------------------------


@pytest.fixture
def bob_has_mail(client, auth, people):
    """alice sends bob two messages, then carol one; bob is logged in."""
    auth.login("alice")
    send(client, "bob", "message one")
    send(client, "bob", "message two")
    as_user(auth, "carol")
    send(client, "bob", "from carol")
    as_user(auth, "bob")


def test_the_list_has_one_row_per_person_newest_first_with_unread_counts(client, auth, bob_has_mail):
    send(client, "alice", "bob writes first to alice? no: a reply")
    as_user(auth, "alice")
    page = client.get("/messages").get_data(as_text=True)
    # Seed: "No messages yet" after sending six. Now the sender sees the conversation.
    assert page.count('class="list-group-item list-group-item-action conversation-row') == 1
    assert "bob writes first" in page and 'class="n">1</span>' in page
    as_user(auth, "bob")
    page = client.get("/messages").get_data(as_text=True)
    rows = re.findall(r'data-with="(\w+)"', page)
    assert rows == ["alice", "carol"], "the latest conversation first"
    assert "You: bob writes first" in page
    assert 'class="n">2</span>' in page and 'class="n">1</span>' in page
    assert badge(client) == ("visible", 3), "listing conversations reads nothing"


def test_opening_a_conversation_reads_only_that_conversation(client, people, app, bob_has_mail):
    # Seed bug: the badge wrapped in {% if %}; and `self.last_read_time` in new_messages().
    assert badge(client) == ("visible", 3)
    page = client.get("/messages/alice").get_data(as_text=True)
    assert page.index("message one") < page.index("message two"), "newest at the bottom"
    assert "autofocus" in page, "the reply box is focused"
    assert badge(client) == ("visible", 1)
    assert stored(app, "unread_message_count", people["bob"]) == [1]
    client.get("/messages/carol")
    assert badge(client) == ("hidden", 0)
    assert stored(app, "conversation", people["bob"]) == [
        {**c, "unread": 0} for c in stored(app, "conversation", people["bob"])
    ]


def test_a_thread_pages_backwards(client, auth, people, app):
    app.config["MESSAGES_PER_PAGE"] = 2
    auth.login("alice")
    for i in range(5):
        send(client, "bob", f"msg {i}")
    page = client.get("/messages/bob").get_data(as_text=True)
    assert "msg 3" in page and "msg 4" in page and "msg 2" not in page
    older = re.search(r'id="older_link" href="([^"]+)"', page).group(1)
    page = client.get(older.replace("&amp;", "&")).get_data(as_text=True)
    assert "msg 1" in page and "msg 2" in page and "msg 4" not in page
    assert 'data-live="0"' in page, "an older page does not take live messages"
    assert client.get("/messages/bob?before=x").status_code == 404


def test_the_conversation_list_pages(client, auth, people, app):
    app.config["MESSAGES_PER_PAGE"] = 1
    auth.login("alice")
    send(client, "bob", "to bob")
    send(client, "carol", "to carol")
    page2 = client.get("/messages?page=2").get_data(as_text=True)
    assert 'data-with="bob"' in page2 and 'data-with="carol"' not in page2
    assert 'href="/messages?page=1">&larr; Newer' in page2
    # A link that leads nowhere is no Tab stop: a span, not <a href="#">.
    assert '<span class="page-link" aria-disabled="true">Older &rarr;</span>' in page2
    assert 'href="#"' not in page2


@pytest.mark.parametrize("page", ["-1", "0", "abc", "99999999999999999999"])
def test_bad_page_numbers_are_a_clear_404(client, auth, people, page):
    auth.login("bob")
    r = client.get(f"/messages?page={page}")
    assert r.status_code == 404 and b"Not found" in r.data


def test_what_a_send_tells_both_people(client, auth, people, fake_redis):
    bob_hears, alice_hears = listen(fake_redis, people["bob"]), listen(fake_redis, people["alice"])
    auth.login("alice")
    send(client, "bob", "hello\nthere, this is a long message that goes on and on past the preview")
    to_bob = heard(bob_hears)
    assert [e["name"] for e in to_bob] == ["unread_message_count", "new_message", "conversation"]
    assert to_bob[0]["data"] == 1
    assert to_bob[1]["data"]["sender"] == "alice"
    conv = to_bob[2]["data"]
    assert conv["with"] == "alice" and conv["from"] == "alice" and conv["unread"] == 1
    assert conv["preview"] == "hello there, this is a long message that goes on and on…"
    (mine,) = heard(alice_hears)
    assert mine["name"] == "conversation" and mine["data"]["with"] == "bob" and mine["data"]["unread"] == 0


def test_reading_tells_the_sender_seen_live_and_on_her_next_visit(client, auth, people, app, fake_redis):
    auth.login("alice")
    send(client, "bob", "first")
    send(client, "bob", "second")
    assert 'id="seen" hidden' in client.get("/messages/bob").get_data(as_text=True)
    alice_hears = listen(fake_redis, people["alice"])
    as_user(auth, "bob")
    client.get("/messages/alice")
    (receipt,) = heard(alice_hears)
    assert receipt["name"] == "message_read" and receipt["data"]["by"] == "bob"
    with app.app_context():
        last = db.session.scalar(sa.select(sa.func.max(Message.id)))
    assert receipt["data"]["message_id"] == last
    assert stored(app, "message_read", people["alice"]) == [receipt["data"]]
    client.get("/messages/alice")
    assert heard(alice_hears) == [], "nothing new read, nothing said"
    as_user(auth, "alice")
    page = client.get("/messages/bob").get_data(as_text=True)
    assert re.search(r'<p class="small text-body-secondary text-end mb-1" id="seen">Seen', page)


def test_newer_gives_a_live_page_what_it_lacks(client, auth, people):
    auth.login("alice")
    send(client, "bob", "one")
    as_user(auth, "bob")
    first = client.get("/messages/alice/newer?after=0").get_json()
    assert "one" in first["html"] and first["unread"] == 1, "fetching is not reading"
    send(client, "alice", "reply")
    after = client.get(f"/messages/alice/newer?after={first['last_id']}").get_json()
    assert "reply" in after["html"] and "one" not in after["html"]
    assert client.get("/messages/alice/newer?after=x").status_code == 400


def test_the_page_reads_what_arrived_while_it_was_open(client, auth, people):
    auth.login("alice")
    send(client, "bob", "while you look")
    as_user(auth, "bob")
    assert badge(client) == ("visible", 1)
    assert client.post("/messages/alice/read").status_code == 204
    assert badge(client) == ("hidden", 0)


# -- typing ----------------------------------------------------------------------------------


def test_typing_is_published_never_stored_and_rate_limited(client, auth, people, app, fake_redis):
    app.config["TYPING_RATE"] = "3 per minute"
    bob_hears = listen(fake_redis, people["bob"])
    auth.login("alice")
    assert client.post("/messages/bob/typing").status_code == 204
    (event,) = heard(bob_hears)
    assert event["name"] == "typing" and event["data"] == {"from": "alice"} and "id" not in event
    assert stored(app, "typing", people["bob"]) == []
    client.post("/messages/bob/typing")
    client.post("/messages/bob/typing")
    r = client.post("/messages/bob/typing", headers={"Accept": "application/json"})
    assert r.status_code == 429 and "error" in r.get_json() and int(r.headers["Retry-After"]) > 0


# -- blocks ----------------------------------------------------------------------------------


def unpersonal(page: str) -> str:
    """A page without what differs from one login to the next (form tokens, the stream's scope)."""
    return re.sub(r'(value|content|data-stream-scope|data-last-event-id|data-csrf)="[^"]*"', "", page)


def test_a_block_refuses_the_sender_clearly_and_unblocking_restores(client, auth, people, app, fake_redis):
    auth.login("alice")
    client.get("/")  # shows (and so clears) the login's flashes
    before = client.get("/user/bob").get_data(as_text=True)
    as_user(auth, "bob")
    r = client.post("/user/alice/block", data={"next": "/messages/alice"})
    assert r.status_code == 302 and r.headers["Location"] == "/messages/alice"
    assert "Unblock alice" in client.get("/messages/alice").get_data(as_text=True)
    bob_hears = listen(fake_redis, people["bob"])
    as_user(auth, "alice")
    client.get("/")
    assert unpersonal(client.get("/user/bob").get_data(as_text=True)) == unpersonal(before), (
        "the block shows nowhere"
    )
    r = send(client, "bob", "are you there?")
    page = r.get_data(as_text=True)
    assert r.status_code == 403 and "bob is not accepting messages from you." in page
    assert "are you there?" in page, "the text comes back"
    r = send(client, "bob", "by script", headers={"Accept": "application/json"})
    assert r.status_code == 403 and r.get_json() == {"error": "bob is not accepting messages from you."}
    client.post("/messages/bob/typing")
    assert heard(bob_hears) == [], "no message, no count, no typing reaches bob"
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Message.id))) == 0
    as_user(auth, "bob")
    r = send(client, "alice", "hm")
    assert r.status_code == 403 and "You have blocked alice." in r.get_data(as_text=True)
    client.post("/user/alice/unblock")
    as_user(auth, "alice")
    assert send(client, "bob", "hello again").status_code == 302
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Block.id))) == 0


def test_blocking_twice_or_unblocking_nobody_is_harmless(client, auth, people, app):
    auth.login("bob")
    for _ in range(2):
        assert client.post("/user/alice/block").status_code == 302
    assert client.post("/user/carol/unblock").status_code == 302
    assert client.post("/user/nobody/block").status_code == 404
    assert client.post("/user/bob/block").status_code == 404
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Block.id))) == 1
    assert "Unblock alice" in client.get("/user/alice").get_data(as_text=True)


# -- the form's token lives as long as the login ------------------------------------------------


def _later(monkeypatch, seconds: float) -> None:
    """itsdangerous' clock (what a CSRF token's age is measured by) moved on by ``seconds``."""
    real = itsdangerous.timed.time.time
    monkeypatch.setattr(itsdangerous.timed, "time", types.SimpleNamespace(time=lambda: real() + seconds))


def test_a_reply_typed_into_a_page_left_open_for_hours_is_sent(csrf_app, monkeypatch):
    csrf_app.config["WTF_CSRF_TIME_LIMIT"] = 3600  # the old limit that lost typed messages
    client = csrf_app.test_client()
    auth = AuthActions(csrf_app, client)
    auth.create("alice")
    auth.create("bob")
    token = csrf_token(client.get("/auth/login").get_data(as_text=True))
    client.post("/auth/login", data={"username": "alice", "password": auth.password, "csrf_token": token})
    page = client.get("/messages/bob").get_data(as_text=True)
    form_token = csrf_token(page)
    script_token = re.search(r'data-csrf="([^"]+)"', page).group(1)
    _later(monkeypatch, 5 * 3600)
    r = client.post("/messages/bob", data={"message": "typed slowly", "csrf_token": form_token})
    assert r.status_code == 302
    assert client.post("/messages/bob/typing", headers={"X-CSRFToken": script_token}).status_code == 204
    # Other forms keep the configured limit: the same wait expires the export form.
    assert client.post("/export_messages", data={"csrf_token": form_token}).status_code == 400
    # A token that is not this session's still gets the text back, with a fresh token to resend.
    r = client.post("/messages/bob", data={"message": "keep me", "csrf_token": "forged"})
    assert r.status_code == 400 and "keep me" in r.get_data(as_text=True)
    assert "Press Send again." in r.get_data(as_text=True)
    assert client.post("/messages/bob/typing").status_code == 400


# -- the rest of the page ------------------------------------------------------------------------


def test_the_profile_opens_the_conversation_and_offers_a_block(client, auth, people):
    auth.login("alice")
    page = client.get("/user/bob").get_data(as_text=True)
    assert 'id="send_message_link" href="/messages/bob"' in page and "Block bob" in page
    mine = client.get("/user/alice").get_data(as_text=True)
    assert "Send private message" not in mine and "Block alice" not in mine
    assert "Member since" in mine and "Last seen" in mine
    assert client.get("/user/nobody").status_code == 404


def test_every_page_has_a_skip_link_a_favicon_and_the_count_in_its_title(client, auth, people):
    assert client.get("/favicon.ico").headers["Location"].endswith("/static/favicon.svg")
    assert client.get("/static/favicon-unread.svg").status_code == 200
    auth.login("alice")
    send(client, "bob", "hi")
    as_user(auth, "bob")
    page = client.get("/").get_data(as_text=True)
    assert '<a class="visually-hidden-focusable' in page and 'href="#content">Skip to content</a>' in page
    assert "<title>(1) Home · Tidings</title>" in page and "favicon-unread.svg" in page


def test_messages_nav_link_goes_to_the_conversations(client, auth, people):
    # Seed bug: the "Messages" link pointed at send_message without a recipient.
    auth.login("bob")
    page = client.get("/").get_data(as_text=True)
    assert re.search(r'<a class="nav-link" id="messages_link" href="/messages">Messages', page)


def test_users_directory_lists_everyone_paginated(client, auth, people, app):
    app.config["USERS_PER_PAGE"] = 1
    auth.login("alice")
    assert b"alice" in client.get("/users").data
    page2 = client.get("/users?page=2").get_data(as_text=True)
    assert "/user/bob" in page2


def test_user_model_counts_only_unread(app, people):
    with app.app_context():
        alice, bob = db.session.get(User, people["alice"]), db.session.get(User, people["bob"])
        db.session.add(Message(sender_id=alice.id, recipient_id=bob.id, body="x"))
        db.session.commit()
        assert bob.unread_message_count() == 1 and alice.unread_message_count() == 0


def test_ids_past_what_the_database_holds_are_no_message(client, auth, people):
    auth.login("alice")
    assert client.get("/messages/bob?before=3000000000").status_code == 404
    r = client.get("/messages/bob/newer?after=3000000000", headers={"Accept": "application/json"})
    assert r.status_code == 400 and "error" in r.get_json()
    assert client.get("/messages/bob?before=2147483647").status_code == 200


def test_a_prefetch_or_an_older_page_reads_nothing(client, auth, people, app):
    app.config["MESSAGES_PER_PAGE"] = 1
    auth.login("alice")
    send(client, "bob", "one")
    send(client, "bob", "two")
    as_user(auth, "bob")
    assert client.get("/messages/alice", headers={"Sec-Purpose": "prefetch"}).status_code == 200
    assert client.get("/messages/alice?before=2").status_code == 200
    assert badge(client) == ("visible", 2)


def test_a_blocked_person_gets_no_seen(client, auth, people, fake_redis):
    auth.login("alice")
    send(client, "bob", "hello")
    alice_hears = listen(fake_redis, people["alice"])
    as_user(auth, "bob")
    client.post("/user/alice/block")
    client.get("/messages/alice")  # bob reads alice's message
    assert heard(alice_hears) == []
    as_user(auth, "alice")
    assert client.get("/messages/bob/newer?after=0").get_json()["seen"] is None
    assert 'id="seen" hidden' in client.get("/messages/bob").get_data(as_text=True)


@pytest.mark.parametrize("target", ["//evil.test", "/\t/evil.test", "https://evil.test/", "\\\\evil.test"])
def test_block_goes_back_only_to_this_site(client, auth, people, target):
    auth.login("bob")
    r = client.post("/user/alice/block", data={"next": target})
    assert r.headers["Location"] == "/user/alice"
