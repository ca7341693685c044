"""Login throttling (app/auth/throttle.py): attackers wait, the account's owner never does."""

from __future__ import annotations

import time

import pytest
from flask.testing import FlaskClient

from app.auth.throttle import DEVICE_COOKIE, delay, lift
from app.limits import network_of

BOB_V6 = ["2001:db8:7:1::1", "2001:db8:7:1::2", "2001:db8:7:1:abcd::9"]  # one /64
ATTACKERS = ["198.51.100.7", "203.0.113.9", *BOB_V6]


@pytest.fixture
def throttled(config):
    """One trusted proxy, so each request may come from the address its X-Forwarded-For names."""
    config.update(
        TRUSTED_PROXIES=1,
        LOGIN_RATE_PER_ADDRESS="1000 per minute",
        LOGIN_FREE_FAILURES=3,
        LOGIN_MAX_DELAY_SECONDS=8,
        LOGIN_DEVICE_FAILURES=4,
        LOGIN_ACCOUNT_ALERT_FAILURES=1000,
    )
    return config


def attempt(client: FlaskClient, password: str, address: str = "192.0.2.1", username: str = "bob"):
    return client.post(
        "/auth/login",
        data={"username": username, "password": password},
        environ_base={"REMOTE_ADDR": "127.0.0.1"},
        headers={"X-Forwarded-For": address},
    )


def test_ipv6_clients_are_counted_per_64_and_ipv4_per_address():
    assert len({network_of(a) for a in BOB_V6}) == 1
    assert network_of("198.51.100.7") == "198.51.100.7"
    assert network_of("::ffff:198.51.100.7") == "198.51.100.7"
    assert network_of("not an address") == "not an address"


def test_an_attacker_never_keeps_bob_out_of_a_browser_he_used_before(throttled, app, auth):
    auth.create("bob")
    bob = app.test_client()
    assert attempt(bob, auth.password).status_code == 302  # bob's browser, now known
    assert bob.post("/auth/logout").status_code == 302
    attacker = app.test_client()
    for round_ in range(3):
        for address in ATTACKERS:  # ten-plus failures a minute from several networks
            r = attempt(attacker, "guess", address)
            assert r.status_code in (200, 429)
        # bob, from his own browser (even from the attacker's own /64), gets in at once every time.
        r = attempt(bob, auth.password, BOB_V6[0])
        assert r.status_code == 302, f"round {round_}: bob was refused"
        assert bob.post("/auth/logout").status_code == 302


def test_past_its_free_failures_an_untrusted_network_must_wait_and_refusals_do_not_prolong_it(
    throttled, app, auth
):
    auth.create("bob")
    attacker = app.test_client()
    statuses = [attempt(attacker, "guess", BOB_V6[0]).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]  # the third shut the gate for 1 s behind it
    refused = [attempt(attacker, "guess", BOB_V6[1]) for _ in range(5)]  # the same /64
    assert all(r.status_code == 429 and b"Too many failed logins" in r.data for r in refused)
    waits = [int(r.headers["Retry-After"]) for r in refused]
    assert all(1 <= w <= 2 for w in waits) and waits == sorted(waits, reverse=True)
    assert "X-RateLimit-Remaining" not in refused[0].headers
    # Another network is not this one: the right password goes through there at once.
    assert attempt(app.test_client(), auth.password, "192.0.2.77").status_code == 302


def test_attempts_sent_in_parallel_get_one_past_the_gate(throttled, app, auth):
    from concurrent.futures import ThreadPoolExecutor

    auth.create("bob")
    for _ in range(3):
        attempt(app.test_client(), "guess", "198.51.100.50")
    # The gate is shut for 1 s; once it opens, ten attempts at once: one gets through.
    time.sleep(2)

    def one(_: int) -> int:
        return attempt(app.test_client(), "guess", "198.51.100.50").status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(one, range(10)))
    assert statuses.count(200) == 1 and statuses.count(429) == 9


def test_the_wait_doubles_after_the_free_failures_and_is_capped():
    assert [delay(n, 3, 8) for n in range(1, 9)] == [0, 0, 1, 2, 4, 8, 8, 8]
    assert delay(10_000, 1, 60) == 60


def test_a_known_browser_that_keeps_failing_loses_its_trust(throttled, app, auth):
    auth.create("bob")
    browser = app.test_client()
    assert attempt(browser, auth.password).status_code == 302
    assert browser.post("/auth/logout").status_code == 302
    for _ in range(4):  # its own budget
        assert attempt(browser, "guess").status_code == 200
    # Now it counts as untrusted, and this network has used up its free failures too.
    for _ in range(3):
        attempt(browser, "guess")
    assert attempt(browser, auth.password).status_code == 429


def test_a_forged_device_cookie_trusts_nothing(throttled, app, auth):
    auth.create("bob")
    attacker = app.test_client()
    attacker.set_cookie(DEVICE_COOKIE, "forged.value.here", path="/auth/")
    for _ in range(3):
        attempt(attacker, "guess")
    assert attempt(attacker, auth.password).status_code == 429


def test_lifting_an_account_or_a_network_lets_it_try_again_at_once(throttled, app, auth):
    auth.create("bob")
    attacker = app.test_client()
    for _ in range(3):
        attempt(attacker, "guess")
    assert attempt(attacker, auth.password).status_code == 429
    r = app.test_cli_runner().invoke(args=["limits", "lift", "--account", "bob"])
    assert r.exit_code == 0 and "account bob" in r.output
    assert attempt(attacker, auth.password).status_code == 302
    assert attempt(app.test_client(), "guess", "192.0.2.9", username="carol").status_code == 200
    with app.app_context(), app.test_request_context():
        assert lift(address="2001:db8:7:1::5") == ["network 2001:db8:7:1::/64"]


def test_only_failures_count(throttled, app, auth):
    auth.create("bob")
    for _ in range(10):
        browser = app.test_client()  # new browsers, the right password each time
        assert attempt(browser, auth.password).status_code == 302


def test_a_new_browser_gets_in_after_at_most_the_documented_delay(throttled, app, auth):
    app.config["LOGIN_MAX_DELAY_SECONDS"] = 2
    auth.create("bob")
    attacker = app.test_client()
    for _ in range(3):
        for address in ATTACKERS:
            attempt(attacker, "guess", address)
    # A new browser on a network the attacker never used gets in at once.
    assert attempt(app.test_client(), auth.password, "192.0.2.200").status_code == 302
    # On the attacker's own /64 it is told to wait, at most the maximum, and is then let in.
    new = app.test_client()
    told = attempt(new, auth.password, BOB_V6[2])
    assert told.status_code == 429
    wait = int(told.headers["Retry-After"])
    assert 0 < wait <= 2
    time.sleep(wait)  # the documented delay itself is what is under test
    assert attempt(new, auth.password, BOB_V6[2]).status_code == 302


def test_lifting_an_address_starts_its_login_limit_afresh(throttled, app, auth):
    app.config["LOGIN_RATE_PER_ADDRESS"] = "2 per minute"
    browser = app.test_client()
    assert [attempt(browser, "guess", "2001:db8:9::1", f"u{i}").status_code for i in range(3)] == [
        200,
        200,
        429,
    ]
    r = app.test_cli_runner().invoke(args=["limits", "lift", "--address", "2001:db8:9::77"])
    assert r.exit_code == 0 and "network 2001:db8:9::/64" in r.output
    assert attempt(browser, "guess", "2001:db8:9::1", "u9").status_code == 200


def test_others_on_its_network_cannot_use_up_a_known_browsers_logins(throttled, app, auth):
    app.config["LOGIN_RATE_PER_ADDRESS"] = "3 per minute"
    auth.create("bob")
    bob = app.test_client()
    assert attempt(bob, auth.password, BOB_V6[0]).status_code == 302
    assert bob.post("/auth/logout").status_code == 302
    neighbour = app.test_client()  # same /64, guessing other accounts until the network's limit
    assert [attempt(neighbour, "x", BOB_V6[1], f"n{i}").status_code for i in range(4)][-1] == 429
    assert attempt(bob, auth.password, BOB_V6[0]).status_code == 302
