"""Login throttling that slows attackers down and never locks the account's owner out.

OWASP's "device cookie" design (Slow Down Online Guessing Attacks with Device Cookies):

* A browser that logged into an account carries a signed *device cookie* naming it. Such a
  browser is *trusted* for that account: others' failures never delay it, nor does the
  per-network login limit. It has a failure budget of its own (``LOGIN_DEVICE_FAILURES`` per
  window); past it, it is treated as untrusted. A password reset ends every browser's trust.
* Only failures count. Failures from untrusted clients are counted per account and client
  network (an IPv4 address, an IPv6 /64): after ``LOGIN_FREE_FAILURES`` in a window
  (``LOGIN_FAILURE_WINDOW_SECONDS``), that network must wait before its next attempt on that
  account is even checked: 1 s, then 2, 4, … up to ``LOGIN_MAX_DELAY_SECONDS``. Attempts during
  the wait are refused (429 with Retry-After) and do not prolong it, so a client that waits as
  told is answered after at most ``LOGIN_MAX_DELAY_SECONDS``. An attempt is counted before its
  password is checked (and taken back if it was right), and the wait is a gate the first
  attempt shuts atomically, so attempts sent in parallel get no more than one at a time.
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


def _devices() -> list[list]:
    """The [account, nonce, epoch] entries this browser's device cookie holds, if its signature
    is good."""
    raw = request.cookies.get(DEVICE_COOKIE)
    if not raw:
        return []
    try:
        value = _serializer().loads(raw, max_age=DEVICE_COOKIE_DAYS * 86400)
    except BadSignature:
        return []
    if not isinstance(value, list):
        return []
    return [entry for entry in value if _is_entry(entry)]


def _is_entry(entry: object) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 3
        and isinstance(entry[0], str)
        and isinstance(entry[1], str)
        and isinstance(entry[2], int)
    )


def _generation(kind: str, name: str) -> int:
    """Which generation an account's or a network's counters, or an account's trusted browsers,
    are on (``lift`` and ``forget_devices`` move it on)."""
    return int(_safely(lambda: limiter.storage.get(f"{PREFIX}:gen:{kind}:{name}"), 0) or 0)


def per_address() -> str:
    """Flask-Limiter's key for the login and registration limits per client network, in the
    network's current generation (so that ``lift`` starts them afresh too)."""
    network = client_network()
    return f"{network}#{_generation('network', network)}"


def trusted_login() -> bool:
    """Flask-Limiter's exemption for the per-network login limit: a login naming an account this
    browser is trusted for (others on its network cannot use up its owner's logins)."""
    return Attempt(request.form.get("username", "")).trusted()


class Attempt:
    """One login attempt naming ``username``, from this request's browser and network.

    ``begin()`` counts the attempt as a failure before the password is checked, atomically, so
    that attempts made in parallel cannot all slip past a wait; ``succeeded()`` takes it back.
    """

    def __init__(self, username: str) -> None:
        self.account = _account(username)
        self.network = client_network()
        self.epoch = _generation("devices", self.account) if self.account else 0
        self.device = next(
            (nonce for name, nonce, epoch in _devices() if name == self.account and epoch == self.epoch), None
        )
        self._keys: dict[str, str] | None = None
        self._counted: str | None = None  # the counter this attempt was counted in, if any

    def keys(self) -> dict[str, str]:
        if self._keys is None:
            account = f"{self.account}#{_generation('account', self.account)}"
            network = f"{self.network}#{_generation('network', self.network)}"
            self._keys = {
                "failures": f"{PREFIX}:failures:{account}:{network}",
                "gate": f"{PREFIX}:wait:{account}:{network}",
                "account": f"{PREFIX}:account:{account}",
                "device": f"{PREFIX}:device:{self.account}#{self.epoch}:{self.device}",
            }
        return self._keys

    @property
    def enabled(self) -> bool:
        return bool(current_app.config["RATELIMIT_ENABLED"])

    def trusted(self) -> bool:
        """Whether this browser logged into the account before (since its last password reset)
        and has failures left in its own budget."""
        if self.device is None or not self.enabled:
            return self.device is not None
        used = _safely(lambda: limiter.storage.get(self.keys()["device"]), 0)
        return used < _setting("LOGIN_DEVICE_FAILURES")

    def begin(self) -> int:
        """Count this attempt in before its password is checked: 0 to go ahead, else how many
        seconds this client must wait (the attempt then counts for nothing)."""
        if not self.enabled:
            return 0
        return _safely(self._begin, 0)

    def _begin(self) -> int:
        storage, keys, window = limiter.storage, self.keys(), _setting("LOGIN_FAILURE_WINDOW_SECONDS")
        if self.device is not None:
            if storage.incr(keys["device"], window) <= _setting("LOGIN_DEVICE_FAILURES"):
                self._counted = "device"
                return 0
            storage.incr(keys["device"], window, -1)  # its budget is spent: an untrusted attempt
        failures = storage.incr(keys["failures"], window)
        self._counted = "failures"
        alert = int(storage.get(keys["account"]) or 0) >= _setting("LOGIN_ACCOUNT_ALERT_FAILURES")
        free = 1 if alert else _setting("LOGIN_FREE_FAILURES")
        wait = delay(failures, free, _setting("LOGIN_MAX_DELAY_SECONDS"))
        # The first attempt to find the gate open shuts it for ``wait`` seconds behind itself.
        if not wait or storage.incr(keys["gate"], wait) == 1:
            return 0
        storage.incr(keys["failures"], window, -1)
        self._counted = None
        # Redis gives whole seconds, rounded: half a second more, so that one wait is enough.
        left = math.ceil(storage.get_expiry(keys["gate"]) - time.time() + 0.5)
        return max(1, min(left, _setting("LOGIN_MAX_DELAY_SECONDS")))

    def failed(self) -> None:
        """A wrong password: the attempt stays counted, and on the account too if untrusted."""
        if self._counted == "failures":
            window = _setting("LOGIN_FAILURE_WINDOW_SECONDS")
            _safely(lambda: limiter.storage.incr(self.keys()["account"], window), None)

    def succeeded(self) -> None:
        """The right password: only failures count, so the attempt is taken back."""
        if self._counted is None:
            return
        key, window = self.keys()[self._counted], _setting("LOGIN_FAILURE_WINDOW_SECONDS")
        _safely(lambda: limiter.storage.incr(key, window, -1), None)
        if self._counted == "failures":
            _safely(lambda: limiter.storage.clear(self.keys()["gate"]), None)

    def remember(self, response: Response) -> None:
        """After a successful login: this browser is trusted for the account from now on."""
        entries = [entry for entry in _devices() if entry[0] != self.account]
        mine = [self.account, self.device or secrets.token_urlsafe(16), self.epoch]
        response.set_cookie(
            DEVICE_COOKIE,
            _serializer().dumps([mine, *entries][:DEVICES_PER_COOKIE]),
            max_age=DEVICE_COOKIE_DAYS * 86400,
            httponly=True,
            secure=current_app.config["SESSION_COOKIE_SECURE"],
            samesite="Lax",
            path="/auth/",
        )


def forget_devices(username: str) -> None:
    """Trust no browser for the account any more (its password was reset): each must log in
    afresh to be trusted again."""
    account = _account(username)
    _safely(lambda: limiter.storage.incr(f"{PREFIX}:gen:devices:{account}", 10 * 365 * 86400), None)


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
    """The storage's answer, or ``default`` while it is away (one warning when it goes) or
    while the limits are off (``RATELIMIT_ENABLED=0``: there is no storage then)."""
    global _storage_away
    if not current_app.config["RATELIMIT_ENABLED"]:
        return default
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
