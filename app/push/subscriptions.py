"""What a browser may subscribe, and the stored subscriptions of a user's logins.

A subscription's endpoint is a URL the site will POST to on the user's behalf: it must be https
on a push service of ``PUSH_ALLOWED_ORIGINS``, with no credentials in it, and its keys must be
what RFC 8291 needs (a P-256 point and a 16-byte secret). Anything else is refused with a
message saying which part is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from urllib3.util import parse_url

from app.extensions import db
from app.models import PUSH_ENDPOINT_MAX, Login, PushSubscription, User, login_is_open

# Devices one user may have subscribed; a new one beyond this replaces the oldest.
MAX_DEVICES = 20


class Refused(ValueError):
    """A subscription the site will not store; ``status``: 400 (malformed), 422 (not allowed) or
    409 (another account's device)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class Submitted(NamedTuple):
    endpoint: str
    p256dh: str
    auth: str


# An endpoint as RFC 3986 writes one: no backslash, space or other character that URL parsers
# read differently (``https://127.0.0.1\\x.allowed.example`` is 127.0.0.1 to the HTTP client).
ENDPOINT_RE = re.compile(
    r"https://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9\-._~%!$&'()*+,;=:@/?]*)?", re.IGNORECASE
)
BASE64URL_RE = re.compile(r"[A-Za-z0-9_-]+={0,2}")


def origin_of(endpoint: str) -> str:
    """``https://host[:port]`` of an endpoint (the port only when not 443), lower case, as the
    HTTP client that sends to it (urllib3, under requests) reads it."""
    parts = parse_url(endpoint)
    host = (parts.host or "").lower()
    port = parts.port
    return f"{(parts.scheme or '').lower()}://{host}" + (f":{port}" if port not in (None, 443) else "")


def allowed(endpoint: str, origins: tuple[str, ...]) -> bool:
    """Whether ``endpoint`` is a plain https URL whose origin is one of ``origins``
    (``https://*.d`` matches under ``d``)."""
    if not ENDPOINT_RE.fullmatch(endpoint):
        return False
    try:
        origin = origin_of(endpoint)
    except ValueError:
        return False
    for entry in origins:
        if entry.startswith("https://*."):
            if origin.startswith("https://") and origin.endswith(entry[len("https://*") :]):
                return True
        elif origin == entry:
            return True
    return False


def _decoded(value: Any, name: str, length: int) -> bytes:
    if not isinstance(value, str) or not BASE64URL_RE.fullmatch(value) or len(value) > 200:
        raise Refused(f"keys.{name} must be a base64url string")
    try:
        raw = base64.urlsafe_b64decode(value.rstrip("=") + "=" * (-len(value.rstrip("=")) % 4))
    except (binascii.Error, ValueError):
        raise Refused(f"keys.{name} is not base64url") from None
    if len(raw) != length:
        raise Refused(f"keys.{name} must be {length} bytes, not {len(raw)}")
    return raw


def parse(body: Any, origins: tuple[str, ...]) -> Submitted:
    """A browser's ``PushSubscription.toJSON()``, checked; Refused says what is wrong."""
    if not isinstance(body, dict):
        raise Refused('the body must be JSON: {"endpoint": …, "keys": {"p256dh": …, "auth": …}}')
    endpoint = body.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise Refused("endpoint must be the push service's URL")
    if len(endpoint) > PUSH_ENDPOINT_MAX:
        raise Refused(f"endpoint is longer than {PUSH_ENDPOINT_MAX} characters")
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        raise Refused("endpoint is not a URL") from None
    if parts.scheme.lower() != "https" or not parts.hostname:
        raise Refused("endpoint must be an https URL", 422)
    if parts.username is not None or parts.password is not None:
        raise Refused("endpoint must not carry credentials", 422)
    if not ENDPOINT_RE.fullmatch(endpoint):
        raise Refused("endpoint has characters a URL does not (RFC 3986)", 422)
    if not allowed(endpoint, origins):
        raise Refused(f"{origin_of(endpoint)} is not a push service this site sends to", 422)
    keys = body.get("keys")
    if not isinstance(keys, dict):
        raise Refused("keys must hold p256dh and auth")
    point = _decoded(keys.get("p256dh"), "p256dh", 65)
    try:
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
    except ValueError:
        raise Refused("keys.p256dh is not a P-256 public key") from None
    _decoded(keys.get("auth"), "auth", 16)
    return Submitted(endpoint, keys["p256dh"].rstrip("="), keys["auth"].rstrip("="))


def store(
    user: User, login_token: str, sub: Submitted, language: str | None, user_agent: str
) -> PushSubscription:
    """Keep ``sub`` for this login: the same endpoint again is updated; an endpoint that was
    another user's starts afresh as this one's only with the same keys (a shared browser: its
    subscription is the same), else ``Refused`` 409 (anyone who learned someone's endpoint
    could take their device over with keys of their own). At most ``MAX_DEVICES`` per user,
    the oldest going first. The caller commits."""
    login_id = db.session.scalar(sa.select(Login.id).where(Login.token == login_token))
    row = db.session.scalar(sa.select(PushSubscription).where(PushSubscription.endpoint == sub.endpoint))
    if row is not None and row.user_id != user.id:
        if not (hmac.compare_digest(row.p256dh, sub.p256dh) and hmac.compare_digest(row.auth, sub.auth)):
            raise Refused("this device is subscribed for another account", 409)
        db.session.delete(row)  # nothing queued for its old owner may reach the new one (a new id)
        db.session.flush()
        row = None
    if row is None:
        row = PushSubscription(endpoint=sub.endpoint, user_id=user.id)
        db.session.add(row)
    row.login_id = login_id
    row.p256dh, row.auth = sub.p256dh, sub.auth
    row.language, row.user_agent = language, user_agent[:256]
    db.session.flush()
    extra = db.session.scalars(
        sa.select(PushSubscription.id)
        .where(PushSubscription.user_id == user.id)
        .order_by(PushSubscription.id.desc())
        .offset(MAX_DEVICES)
    ).all()
    if extra:
        db.session.execute(sa.delete(PushSubscription).where(PushSubscription.id.in_(extra)))
    return row


def of_user(user_id: int) -> list[PushSubscription]:
    """The user's devices whose login is open, newest first."""
    return list(
        db.session.scalars(
            sa.select(PushSubscription)
            .where(PushSubscription.user_id == user_id, PushSubscription.login_id.in_(_open_logins()))
            .order_by(PushSubscription.id.desc())
        )
    )


def remove_ended(user_id: int) -> None:
    """Remove the user's devices whose login has ended (expired; revoked ones went with it)."""
    done = db.session.execute(
        sa.delete(PushSubscription).where(
            PushSubscription.user_id == user_id, PushSubscription.login_id.not_in(_open_logins())
        )
    )
    if done.rowcount:
        db.session.commit()


def _open_logins():
    return sa.select(Login.id).where(*login_is_open())


def remove_of_logins(tokens: list[str]) -> None:
    """Remove the subscriptions made in these logins (they are ending). The caller commits."""
    logins = sa.select(Login.id).where(Login.token.in_(tokens))
    db.session.execute(sa.delete(PushSubscription).where(PushSubscription.login_id.in_(logins)))


def device_name(user_agent: str) -> str:
    """ "Firefox on Android" and the like, from a User-Agent, for the list of devices."""
    ua = user_agent or ""
    browser = next(
        (name for token, name in BROWSERS if token in ua),
        "",
    )
    system = next((name for token, name in SYSTEMS if token in ua), "")
    if browser and system:
        return f"{browser} · {system}"
    return browser or system or ua[:40] or "?"


# Checked in order: Edge and Opera say "Chrome" too, Chrome says "Safari".
BROWSERS = [
    ("Edg/", "Edge"),
    ("OPR/", "Opera"),
    ("Firefox/", "Firefox"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
]
SYSTEMS = [
    ("Android", "Android"),
    ("iPhone", "iOS"),
    ("iPad", "iPadOS"),
    ("Windows", "Windows"),
    ("Mac OS X", "macOS"),
    ("CrOS", "ChromeOS"),
    ("Linux", "Linux"),
]
