"""Service keys: made from the CLI (``flask keys create``), shown once, kept as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import timedelta

import sqlalchemy as sa

from app.extensions import db
from app.models import ApiKey, utcnow

TOKEN = re.compile(r"tid_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_USE_RESOLUTION = timedelta(minutes=1)  # last use is recorded to the minute
_NO_KEY = hashlib.sha256(b"no such key").hexdigest()


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(name: str, kinds: list[str], recipients: list[str] | None = None) -> tuple[ApiKey, str]:
    """A new key (the caller commits) and its bearer token, which is nowhere else."""
    prefix, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    key = ApiKey(
        name=name,
        prefix=prefix,
        secret_hash=_digest(secret),
        kinds=",".join(kinds),
        recipients=",".join(recipients) if recipients else None,
    )
    db.session.add(key)
    return key, f"tid_{prefix}_{secret}"


def authenticate(authorization: str | None) -> ApiKey | None:
    """The live key a ``Bearer`` header names, or None (missing, malformed, unknown, revoked).
    The secret is compared in constant time, and an unknown prefix costs the same comparison."""
    scheme, _, token = (authorization or "").partition(" ")
    match = TOKEN.fullmatch(token.strip()) if scheme.lower() == "bearer" else None
    if match is None:
        return None
    prefix, secret = match.groups()
    key = db.session.scalar(sa.select(ApiKey).where(ApiKey.prefix == prefix))
    ok = hmac.compare_digest(_digest(secret), key.secret_hash if key is not None else _NO_KEY)
    if not ok or key is None or key.revoked_at is not None:
        return None
    return key


def note_use(key: ApiKey) -> None:
    """Record the key's last use (to the minute), in the caller's transaction."""
    now = utcnow()
    if key.last_used_at is None or now - key.last_used_at > _USE_RESOLUTION:
        key.last_used_at = now
