"""A push service of our own for the tests and the benchmark: HTTPS on 127.0.0.1.

It does what a browser's push service does with a push, and checks it as strictly: the VAPID
``Authorization`` header (RFC 8292) is verified (ES256 signature over the claims, ``aud`` its own
origin, ``exp`` within 24 h, ``sub`` a mailto:/https: URL), and the body is decrypted with the
device's private key and auth secret (RFC 8291, ``aes128gcm``), written here from the RFC rather
than with the library the site encrypts with. Each device is an endpoint ``/push/<token>`` with
a key pair made here, so a test subscribes with ``device.subscription()`` exactly as a browser's
``PushSubscription.toJSON()`` would, and tells the device how to answer (``answers``: statuses
in turn, then 201; ``hang``: seconds to wait before answering).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from harness.servers import make_certificate


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@dataclass
class Device:
    """One browser's subscription: its endpoint here and its keys."""

    token: str
    endpoint: str
    private_key: ec.EllipticCurvePrivateKey
    auth: bytes
    answers: list[int] = field(default_factory=list)
    hang: float = 0.0

    def subscription(self) -> dict[str, Any]:
        """What ``PushSubscription.toJSON()`` gives."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": b64url(_point(self.private_key.public_key())), "auth": b64url(self.auth)},
        }


@dataclass
class Push:
    """A push this service took: the device, the checked VAPID claims and key, the plaintext."""

    token: str
    status: int
    headers: dict[str, str]
    claims: dict[str, Any] | None
    vapid_key: str | None
    payload: bytes | None
    problem: str | None
    received: float = field(default_factory=time.monotonic)

    @property
    def json(self) -> Any:
        return json.loads(self.payload)


class FakePushService:
    """``start()``, then ``device()`` per subscription; ``pushes`` lists what came, in order."""

    def __init__(self, folder: Path) -> None:
        self.cert, self.key = folder / "push-cert.pem", folder / "push-key.pem"
        make_certificate(self.cert, self.key)
        self.devices: dict[str, Device] = {}
        self.pushes: list[Push] = []
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None

    @property
    def origin(self) -> str:
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakePushService:
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, push = service._take(self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                if status in (429, 503):
                    self.send_header("Retry-After", "1")
                if status in (301, 302, 307, 308):  # elsewhere on this service: never to be followed
                    self.send_header("Location", f"{service.origin}/elsewhere")
                self.end_headers()
                if push is not None:
                    with service._changed:
                        service.pushes.append(push)
                        service._changed.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def settings(self, subject: str = "mailto:ops@tidings.test") -> dict[str, str]:
        """The environment that makes a site push here: this origin allowed, its certificate
        trusted by the worker's HTTP client, a VAPID subject."""
        return {
            "PUSH_ALLOWED_ORIGINS": self.origin,
            "VAPID_SUBJECT": subject,
            "REQUESTS_CA_BUNDLE": str(self.cert),
        }

    def device(self, answers: list[int] | None = None, hang: float = 0.0) -> Device:
        """A new subscription: its own endpoint, P-256 key pair and auth secret."""
        token = secrets.token_urlsafe(16)
        device = Device(
            token,
            f"{self.origin}/push/{token}",
            ec.generate_private_key(ec.SECP256R1()),
            secrets.token_bytes(16),
            list(answers or []),
            hang,
        )
        self.devices[token] = device
        return device

    def wait_for(self, count: int, timeout: float) -> list[Push]:
        """Wait until ``count`` pushes came (AssertionError after ``timeout`` s); returns them all."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.pushes) >= count, timeout):
                raise AssertionError(f"{len(self.pushes)} pushes came in {timeout} s, not {count}")
            return list(self.pushes)

    def to(self, device: Device) -> list[Push]:
        """The pushes that came for ``device``."""
        return [p for p in self.pushes if p.token == device.token]

    # -- one push --------------------------------------------------------------------------

    def _take(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Push | None]:
        token = path.rsplit("/", 1)[-1]
        device = self.devices.get(token) if path.startswith("/push/") else None
        if device is None:
            return 404, None
        if device.hang:
            time.sleep(device.hang)
        lower = {k.lower(): v for k, v in headers.items()}
        claims = key = payload = None
        problem = None
        try:
            claims, key = verify_vapid(lower.get("authorization", ""), self.origin)
            if lower.get("content-encoding") != "aes128gcm":
                raise ValueError(f"Content-Encoding is {lower.get('content-encoding')!r}, not aes128gcm")
            if "ttl" not in lower:
                raise ValueError("no TTL header")
            payload = decrypt(body, device.private_key, device.auth)
        except (ValueError, KeyError, InvalidSignature) as exc:
            problem = f"{exc.__class__.__name__}: {exc}"
        status = 400 if problem else (device.answers.pop(0) if device.answers else 201)
        return status, Push(token, status, headers, claims, key, payload, problem)


def verify_vapid(header: str, origin: str) -> tuple[dict[str, Any], str]:
    """The claims and public key of ``Authorization: vapid t=<JWT>, k=<key>``; ValueError (or
    InvalidSignature) unless it is signed by that key, for ``origin``, and not expired."""
    scheme, _, rest = header.partition(" ")
    if scheme.lower() != "vapid":
        raise ValueError(f"Authorization is not vapid: {header[:40]!r}")
    parts = dict(p.strip().split("=", 1) for p in rest.split(",") if "=" in p)
    token, key = parts["t"], parts["k"]
    signing_input, _, signature = token.rpartition(".")
    header_json, _, claims_json = signing_input.partition(".")
    if json.loads(unb64url(header_json)).get("alg") != "ES256":
        raise ValueError("the JWT is not ES256")
    raw = unb64url(signature)
    if len(raw) != 64:
        raise ValueError("an ES256 signature is 64 bytes")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(key))
    public.verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    claims = json.loads(unb64url(claims_json))
    if claims.get("aud") != origin:
        raise ValueError(f"aud is {claims.get('aud')!r}, not {origin}")
    if not time.time() < claims.get("exp", 0) <= time.time() + 86400:
        raise ValueError(f"exp {claims.get('exp')} is not within the next 24 h")
    if not str(claims.get("sub", "")).startswith(("mailto:", "https://")):
        raise ValueError(f"sub {claims.get('sub')!r} is not a mailto: or https: URL")
    return claims, key


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def decrypt(body: bytes, private_key: ec.EllipticCurvePrivateKey, auth: bytes) -> bytes:
    """RFC 8291's aes128gcm, one record: the plaintext a browser gives its service worker."""
    salt, record_size, id_length = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    sender = body[21 : 21 + id_length]
    ciphertext = body[21 + id_length :]
    if id_length != 65 or len(ciphertext) > record_size:
        raise ValueError("not one aes128gcm record keyed by a P-256 point")
    sender_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender)
    shared = private_key.exchange(ec.ECDH(), sender_key)
    receiver = _point(private_key.public_key())
    # HKDF(auth, shared, "WebPush: info" 0x00 ua_public as_public, 32), then the content keys.
    ikm = _hmac(_hmac(auth, shared), b"WebPush: info\x00" + receiver + sender + b"\x01")
    prk = _hmac(salt, ikm)
    cek = _hmac(prk, b"Content-Encoding: aes128gcm\x00\x01")[:16]
    nonce = _hmac(prk, b"Content-Encoding: nonce\x00\x01")[:12]
    padded = AESGCM(cek).decrypt(nonce, ciphertext, None).rstrip(b"\x00")
    if not padded.endswith(b"\x02"):
        raise ValueError("the last record's delimiter is not 0x02")
    return padded[:-1]
