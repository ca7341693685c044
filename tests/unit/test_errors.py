"""Bad input gets a clear answer, in the site's look or as JSON, and never a 500."""

import logging

import pytest
import sqlalchemy as sa

from app.extensions import db
from app.models import Message


@pytest.fixture
def logged_in(auth):
    auth.create("alice")
    auth.create("bob")
    auth.login("alice")
    return auth


def test_404_page_has_the_site_look(client):
    r = client.get("/no/such/page")
    assert r.status_code == 404
    assert b"Not found" in r.data and b'class="navbar' in r.data


def test_405_page_names_allowed_methods(client):
    r = client.delete("/auth/login")
    assert r.status_code == 405 and "GET" in r.headers["Allow"]
    assert b"Method not allowed" in r.data


def test_json_clients_get_json_errors(client):
    r = client.get("/no/such/page", headers={"Accept": "application/json"})
    assert r.status_code == 404 and r.is_json and r.get_json()["error"]


def test_huge_fields_are_refused_with_413(client, logged_in, app):
    r = client.post("/send_message/bob", data={"message": "x" * 200_000})
    assert r.status_code == 413 and b"Too large" in r.data
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Message.id))) == 0


def test_huge_username_on_login_is_a_form_error(client, logged_in):
    logged_in.logout()
    r = client.post("/auth/login", data={"username": "u" * 5000, "password": "p"})
    assert r.status_code == 200 and b"At most 64 characters." in r.data


def test_non_utf8_form_bytes_do_not_crash(client, logged_in, app):
    r = client.post(
        "/send_message/bob",
        data=b"message=%FF%FEhello%C0",
        content_type="application/x-www-form-urlencoded",
    )
    assert r.status_code in (200, 302, 400)
    r = client.get("/user/%FF%FE")
    assert r.status_code == 404


def test_non_utf8_query_string_does_not_crash(client, logged_in):
    assert client.get("/messages?page=%FF").status_code == 404
    client.get("/auth/logout")
    logged_in.login("bob")
    r = client.get("/notifications?since=%FF%FE")
    assert r.status_code == 400 and r.is_json


def test_missing_csrf_token_is_refused_clearly(app, client, auth):
    app.config["WTF_CSRF_ENABLED"] = True
    auth.create("alice")
    r = client.post("/auth/login", data={"username": "alice", "password": auth.password})
    assert r.status_code == 400
    assert b"The form expired or was not sent from this site" in r.data


def test_unexpected_errors_are_a_500_page_and_roll_back(app, client):
    @app.route("/boom")
    def boom():
        raise RuntimeError("kaput")

    r = client.get("/boom")
    assert r.status_code == 500 and b"Something went wrong" in r.data


def test_a_database_outage_is_a_503_with_retry_after_and_one_log_line(app, client, auth, caplog):
    caplog.set_level(logging.INFO, "app.errors")

    def unavailable():
        raise sa.exc.OperationalError("SELECT 1", {}, Exception("terminating connection"))

    def user_gone(token):  # the user is loaded from the database that is away (the page's navbar)
        unavailable()

    app.add_url_rule("/_unavailable", "unavailable", unavailable)
    auth.create("alice")
    auth.login("alice")
    loader = app.login_manager._user_callback
    app.login_manager.user_loader(user_gone)
    for _ in range(5):
        r = client.get("/_unavailable")
        assert r.status_code == 503 and r.headers["Retry-After"] == "2"
        assert b"database is unavailable" in r.data and b'class="navbar' in r.data
    json = client.get("/_unavailable", headers={"Accept": "application/json"})
    assert json.status_code == 503 and "database" in json.get_json()["error"]
    app.login_manager.user_loader(loader)
    lines = [rec for rec in caplog.records if "reach the database" in rec.getMessage()]
    assert len(lines) == 1 and "Traceback" not in caplog.text
    assert client.get("/").status_code == 200
    assert any("could reach the database" in rec.getMessage() for rec in caplog.records)
