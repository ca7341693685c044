"""Every route driven with hostile values (hypothesis), on SQLite and PostgreSQL: a clear 4xx or
a normal page, never a 500, never a half-written row."""

from __future__ import annotations

from urllib.parse import quote

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.extensions import db
from app.models import Message, Notification, User

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))

# Text as a hostile client sends it: NUL and control characters, CR/LF, digits of other
# scripts, right-to-left marks, long runs (but no lone surrogates: they cannot be sent as UTF-8).
hostile = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=80),
    st.sampled_from(
        ["①", "²", "٣", "1e999", "-1", "0", "99999999999999999999", "\x00", "a\r\nb", "%00", "//x"]
    ),
    st.text(st.sampled_from("\x00\r\n\t /\\.%"), max_size=10),
    st.integers().map(str),
    st.just("x" * 5000),
)


@pytest.fixture(autouse=True)
def no_rate_limits(config):
    """These tests are about input, not volume (test_limits.py is)."""
    config["RATELIMIT_ENABLED"] = False


def counts(app) -> tuple[int, int, int]:
    with app.app_context():
        return tuple(
            db.session.scalar(sa.select(sa.func.count(model.id))) for model in (User, Message, Notification)
        )


@pytest.fixture
def bob_logged_in(auth, client):
    auth.create("alice")
    auth.create("bob")
    auth.login("alice")
    return client


def assert_answered(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)[:500]


@FUZZ
@given(value=hostile)
def test_query_values_never_break_a_page(bob_logged_in, value):
    client = bob_logged_in
    for path in ("/", "/users", "/messages", "/notifications", "/auth/login", "/stream"):
        for name in ("page", "since", "next", "last_event_id"):
            r = client.get(path, query_string={name: value})
            if path == "/stream" and r.status_code == 503:
                continue  # in-process there is no gevent worker: the only 5xx /stream may give
            assert_answered(r)
    for path, name in (("/messages/alice", "before"), ("/messages/alice/newer", "after")):
        assert_answered(client.get(path, query_string={name: value}))
    r = client.get("/stream", headers={"Last-Event-ID": value.replace("\r", "").replace("\n", "")})
    assert r.status_code in (400, 503)


@FUZZ
@given(value=hostile)
def test_path_values_never_break_a_page(bob_logged_in, value):
    client = bob_logged_in
    segment = quote(value, safe="")
    for template in (
        "/user/{}",
        "/send_message/{}",
        "/messages/{}",
        "/messages/{}/newer",
        "/exports/{}",
        "/{}",
    ):
        assert_answered(client.get(template.format(segment)))


@FUZZ
@given(username=hostile, email=hostile, password=hostile)
def test_registering_with_anything_is_a_form_error_or_an_account(client, app, username, email, password):
    before = counts(app)
    data = {"username": username, "email": email, "password": password, "password2": password}
    r = client.post("/auth/register", data=data)
    assert_answered(r)
    users = counts(app)[0]
    assert users == before[0] + (1 if r.status_code == 302 else 0), "no half-written account"


@FUZZ
@given(username=hostile, password=hostile, next_page=hostile)
def test_logging_in_with_anything_is_refused_cleanly(client, auth, username, password, next_page):
    r = client.post(
        "/auth/login", query_string={"next": next_page}, data={"username": username, "password": password}
    )
    assert_answered(r)
    assert r.status_code != 302 or "\n" not in r.headers["Location"]


@FUZZ
@given(message=hostile, recipient=st.sampled_from(["bob", "alice", "nobody"]))
def test_sending_anything_is_a_message_or_a_form_error(bob_logged_in, app, message, recipient):
    before = counts(app)
    route = "/send_message/{}" if len(message) % 2 else "/messages/{}"  # the old form, the reply box
    r = bob_logged_in.post(route.format(recipient), data={"message": message})
    assert_answered(r)
    after = counts(app)
    if r.status_code == 302 and recipient == "bob":
        assert after[1] == before[1] + 1
    else:
        assert after[1:] == before[1:], "nothing half-written"
