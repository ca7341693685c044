"""Login throttling that slows attackers down and never locks the account's owner out.

OWASP's "device cookie" design (Slow Down Online Guessing Attacks with Device Cookies):

* A browser that logged into an account carries a signed *device cookie* naming it. Such a
  browser is *trusted* for that account: others' failures never delay it. It has a failure
  budget of its own (``LOGIN_DEVICE_FAILURES`` per window); past it, it is treated as untrusted.
* Only failures count. Failures from untrusted clients are counted per account and client
  network (an IPv4 address, an IPv6 /64): after ``LOGIN_FREE_FAILURES`` in a window
  (``LOGIN_FAILURE_WINDOW_SECONDS``), that network must wait before its next attempt on that
  account is even checked: 1 s, then 2, 4, … up to ``LOGIN_MAX_DELAY_SECONDS``. Attempts during
  the wait are refused (429 with Retry-After) and do not prolong it, so a client that waits as
  told is answered after at most ``LOGIN_MAX_DELAY_SECONDS``.
* When an account collects ``LOGIN_ACCOUNT_ALERT_FAILURES`` untrusted failures in a window
  (guessing from many networks), every network gets a single free failure on it.

The counters live in the rate limiter's storage (Redis, shared by every worker and host).
``flask --app wsgi limits lift`` starts an account's or a network's counters afresh by moving
them to a new generation.
"""

from __future__ import annotations

import logging
import math
import secrets
import time

from flask import Response, current_app, request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from app.limits import client_network, limiter, network_of

log = logging.getLogger(__name__)

DEVICE_COOKIE = "tidings_device"
DEVICE_COOKIE_DAYS = 180
DEVICES_PER_COOKIE = 8  # accounts one browser remembers having logged into
PREFIX = "tidings-login"


def _setting(name: str) -> int:
    return int(current_app.config[name])


def _serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.secret_key, salt="tidings-device-cookie")


def _account(username: str) -> str:
    return (username or "").strip().lower()[:64]


def _devices() -> list[list[str]]:
    """The (account, nonce) pairs this browser's device cookie holds, if its signature is good."""
    raw = request.cookies.get(DEVICE_COOKIE)
    if not raw:
        return []
    try:
        value = _serializer().loads(raw, max_age=DEVICE_COOKIE_DAYS * 86400)
    except BadSignature:
        return []
    if not isinstance(value, list):
        return []
    return [pair for pair in value if isinstance(pair, list) and len(pair) == 2 and all(map(_is_str, pair))]


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _generation(kind: str, name: str) -> int:
    """Which generation of counters an account or a network is on (``lift`` moves it on)."""
    return int(_safely(lambda: limiter.storage.get(f"{PREFIX}:gen:{kind}:{name}"), 0) or 0)


def per_address() -> str:
    """Flask-Limiter's key for the login and registration limits per client network, in the
    network's current generation (so that ``lift`` starts them afresh too)."""
    network = client_network()
    return f"{network}#{_generation('network', network)}"


class Attempt:
    """One login attempt naming ``username``, from this request's browser and network."""

    def __init__(self, username: str) -> None:
        self.account = _account(username)
        self.network = client_network()
        self.device = next((nonce for name, nonce in _devices() if name == self.account), None)
        self._keys: dict[str, str] | None = None

    def keys(self) -> dict[str, str]:
        if self._keys is None:
            account = f"{self.account}#{_generation('account', self.account)}"
            network = f"{self.network}#{_generation('network', self.network)}"
            self._keys = {
                "failures": f"{PREFIX}:failures:{account}:{network}",
                "wait": f"{PREFIX}:wait:{account}:{network}",
                "account": f"{PREFIX}:account:{account}",
                "device": f"{PREFIX}:device:{self.device}",
            }
        return self._keys

    @property
    def enabled(self) -> bool:
        return bool(current_app.config["RATELIMIT_ENABLED"])

    def trusted(self) -> bool:
        """Whether this browser logged into the account before and has not used up its budget."""
        if self.device is None:
            return False
        used = _safely(lambda: limiter.storage.get(self.keys()["device"]), 0)
        return used < _setting("LOGIN_DEVICE_FAILURES")

    def wait(self) -> int:
        """Seconds this client must still wait before the attempt is checked (0: go ahead)."""
        if not self.enabled or self.trusted():
            return 0

        def remaining() -> int:
            key = self.keys()["wait"]
            if not limiter.storage.get(key):
                return 0
            return max(1, math.ceil(limiter.storage.get_expiry(key) - time.time()))

        return _safely(remaining, 0)

    def failed(self) -> None:
        """Count a wrong password: against the device if trusted, else against account and network."""
        if not self.enabled:
            return
        window = _setting("LOGIN_FAILURE_WINDOW_SECONDS")
        keys = self.keys()
        if self.trusted():
            _safely(lambda: limiter.storage.incr(keys["device"], window), None)
            return

        def count() -> None:
            failures = limiter.storage.incr(keys["failures"], window)
            on_account = limiter.storage.incr(keys["account"], window)
            alert = on_account >= _setting("LOGIN_ACCOUNT_ALERT_FAILURES")
            free = 1 if alert else _setting("LOGIN_FREE_FAILURES")
            wait = delay(failures, free, _setting("LOGIN_MAX_DELAY_SECONDS"))
            if wait:
                limiter.storage.incr(keys["wait"], wait)

        _safely(count, None)

    def remember(self, response: Response) -> None:
        """After a successful login: this browser is trusted for the account from now on."""
        pairs = [pair for pair in _devices() if pair[0] != self.account]
        pairs = [[self.account, self.device or secrets.token_urlsafe(16)], *pairs][:DEVICES_PER_COOKIE]
        response.set_cookie(
            DEVICE_COOKIE,
            _serializer().dumps(pairs),
            max_age=DEVICE_COOKIE_DAYS * 86400,
            httponly=True,
            secure=current_app.config["SESSION_COOKIE_SECURE"],
            samesite="Lax",
            path="/auth/",
        )


def delay(failures: int, free: int, most: int) -> int:
    """Seconds a network waits after its ``failures``-th failure on an account: none for the
    first ``free - 1``, then 1, 2, 4 … up to ``most``."""
    if failures < free:
        return 0
    return min(2 ** min(failures - free, 30), most)


def lift(account: str | None = None, address: str | None = None) -> list[str]:
    """Start the named account's and/or network's login counters afresh (and the network's
    login and registration limits); what was lifted."""
    lifted = []
    if account:
        name = _account(account)
        limiter.storage.incr(f"{PREFIX}:gen:account:{name}", 10 * 365 * 86400)
        lifted.append(f"account {name}")
    if address:
        network = network_of(address)
        limiter.storage.incr(f"{PREFIX}:gen:network:{network}", 10 * 365 * 86400)
        lifted.append(f"network {network}")
    return lifted


_storage_away = False


def _safely(call, default):
    """The storage's answer, or ``default`` while it is away (one warning when it goes)."""
    global _storage_away
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - any storage error: throttle nothing rather than fail logins
        if not _storage_away:
            log.warning("login throttling is off while its storage is unreachable: %s", exc)
            _storage_away = True
        return default
    if _storage_away:
        log.info("login throttling storage is back")
        _storage_away = False
    return result
