"""The site's VAPID key pair (RFC 8292): push services know the site by its public key, which a
browser's subscription is bound to. Given in ``VAPID_PRIVATE_KEY`` (PEM, or base64url of the raw
32-byte key or of its DER), else made once and kept in ``instance/vapid_private_key.pem``, like the
secret key. Every host of one site must use the same key: set ``VAPID_PRIVATE_KEY`` on each.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from flask import Flask, current_app
from py_vapid import Vapid, VapidException

from app.config import kept_once

KEY_FILE = "vapid_private_key.pem"
EXTENSION_KEY = "push.vapid"


@dataclass(frozen=True)
class VapidKey:
    """The signing key and what browsers are given: the public key as ``applicationServerKey``."""

    vapid: Vapid
    public_key: str  # base64url of the uncompressed P-256 point
    subject: str  # the JWT's sub: a mailto: or https: URL

    def headers(self, endpoint_origin: str, expires_in: int = 12 * 3600) -> dict[str, str]:
        """The ``Authorization: vapid t=…, k=…`` header for one push service."""
        import time

        claims = {"aud": endpoint_origin, "sub": self.subject, "exp": int(time.time()) + expires_in}
        return self.vapid.sign(claims)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load(raw: str | None, instance_path: str) -> Vapid:
    """The key from ``raw`` (PEM or base64url), else from (or made once in) ``instance/``."""
    if raw:
        raw = raw.strip()
        try:
            if raw.startswith("-----BEGIN"):
                return Vapid.from_pem(raw.encode())
            return Vapid.from_string(raw)
        except (ValueError, TypeError, VapidException) as exc:
            raise RuntimeError(
                "VAPID_PRIVATE_KEY must be a P-256 private key: PEM, or base64url of the raw key or "
                f"its DER ({exc.__class__.__name__})"
            ) from None

    def made() -> bytes:
        vapid = Vapid()
        vapid.generate_keys()
        return vapid.private_pem()

    return Vapid.from_pem(kept_once(Path(instance_path) / KEY_FILE, made))


def init_app(app: Flask) -> None:
    vapid = load(app.config.get("VAPID_PRIVATE_KEY"), app.instance_path)
    point = vapid.public_key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    app.extensions[EXTENSION_KEY] = VapidKey(vapid, b64url(point), app.config["VAPID_SUBJECT"])


def current() -> VapidKey:
    """The current app's key."""
    return current_app.extensions[EXTENSION_KEY]
