"""Logins end on the server: the form token rotates at login, idle and absolute lifetimes hold."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import Login, utcnow
from harness.clients import csrf_token
from tests.conftest import AuthActions


def test_the_form_token_minted_before_login_stops_working_after_it(csrf_app):
    client = csrf_app.test_client()
    auth = AuthActions(csrf_app, client)
    auth.create("alice")
    before = csrf_token(client.get("/auth/login").get_data(as_text=True))  # perhaps a planted one
    login = {"username": "alice", "password": auth.password, "csrf_token": before}
    assert client.post("/auth/login", data=login).status_code == 302
    after = csrf_token(client.get("/").get_data(as_text=True))
    assert after != before
    assert client.post("/auth/logout", data={"csrf_token": before}).status_code == 400
    assert client.post("/auth/logout", data={"csrf_token": after}).status_code == 302


def age(app, **times: timedelta) -> None:
    """Move every login's recorded times back by ``times`` (created_at=…, last_used_at=…)."""
    with app.app_context():
        values = {column: utcnow() - ago for column, ago in times.items()}
        db.session.execute(sa.update(Login).values(**values))
        db.session.commit()


@pytest.mark.parametrize(
    ("times", "open_"),
    [
        ({"last_used_at": timedelta(hours=71)}, True),
        ({"last_used_at": timedelta(hours=73)}, False),  # idle past LOGIN_IDLE_HOURS (72)
        ({"created_at": timedelta(days=29), "last_used_at": timedelta(minutes=1)}, True),
        ({"created_at": timedelta(days=31), "last_used_at": timedelta(minutes=1)}, False),  # absolute
    ],
    ids=["idle-71h", "idle-73h", "29-days", "31-days"],
)
def test_a_login_past_its_idle_or_absolute_lifetime_is_refused_cookies_or_not(
    app, auth, client, times, open_
):
    auth.create("alice")
    r = auth.login("alice", remember_me="y")
    assert r.status_code == 302
    age(app, **times)
    page = client.get("/messages")
    assert (page.status_code == 200) is open_
    stream = client.get("/stream")  # the stream's own login check (no user loaded)
    assert (stream.status_code != 401) is open_
    if not open_:
        assert page.headers["Location"].startswith("/auth/login")
        client.delete_cookie("session")  # the remember-me cookie alone does not bring it back
        assert client.get("/messages").status_code == 302


def test_a_page_records_the_logins_use_so_an_active_login_stays_open(app, auth, client):
    auth.create("alice")
    auth.login("alice")
    age(app, last_used_at=timedelta(hours=71))
    assert client.get("/messages").status_code == 200  # records the use
    with app.app_context():
        last = db.session.scalar(sa.select(Login.last_used_at))
    assert utcnow() - last < timedelta(minutes=1)
