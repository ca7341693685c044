"""Security headers on every response (flask-talisman), no caching of private pages, proxy headers,
the signed-cookie sessions, and the CSRF check of the page scripts' requests.

Talisman writes the CSP (``script-src 'self'``: the pages carry no inline script or style),
``frame-ancestors 'none'`` with ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff``
and a ``Referrer-Policy``. It neither redirects to HTTPS nor sends HSTS: TLS ends at the
proxy in front (deploy/nginx/), which does both, and ``make run`` serves plain HTTP.
"""

from __future__ import annotations

import ipaddress

from flask import Flask, Response, current_app, request
from flask.sessions import SecureCookieSessionInterface
from flask_talisman import Talisman
from flask_wtf.csrf import CSRFError, validate_csrf
from itsdangerous import URLSafeTimedSerializer
from werkzeug.middleware.proxy_fix import ProxyFix
from wtforms import ValidationError

CONTENT_SECURITY_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    # Bootstrap draws its close buttons and toggler with data: SVGs.
    "img-src": "'self' data:",
    "connect-src": "'self'",
    "object-src": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}

# Responses that may be cached: static files (they set their own Cache-Control).
_CACHEABLE_ENDPOINTS = frozenset({"static", "bootstrap.static"})


class SessionInterface(SecureCookieSessionInterface):
    """Flask's signed-cookie sessions, with the signing serializer built once per set of keys.

    Flask builds a serializer for every request, and building one dumps a test value to
    JSON: a third of opening the session in a connect's profile. The serializer depends
    only on the keys and this class's settings, so one per key set does the same work.
    """

    def __init__(self) -> None:
        self._serializers: dict[tuple, URLSafeTimedSerializer] = {}

    def get_signing_serializer(self, app: Flask) -> URLSafeTimedSerializer | None:
        if not app.secret_key:
            return None
        keys = (app.secret_key, tuple(app.config["SECRET_KEY_FALLBACKS"] or ()))
        found = self._serializers.get(keys)
        if found is None:
            found = self._serializers[keys] = super().get_signing_serializer(app)
        return found


def init_app(app: Flask) -> None:
    """Install the headers and sessions, and ProxyFix for ``TRUSTED_PROXIES`` proxies in front."""
    app.session_interface = SessionInterface()
    Talisman(
        app,
        force_https=False,
        strict_transport_security=False,
        frame_options="DENY",
        content_security_policy=CONTENT_SECURITY_POLICY,
        referrer_policy="strict-origin-when-cross-origin",
        session_cookie_secure=app.config["SESSION_COOKIE_SECURE"],
        session_cookie_http_only=True,
        session_cookie_samesite=app.config["SESSION_COOKIE_SAMESITE"],
    )
    app.after_request(_no_store)
    proxies = app.config["TRUSTED_PROXIES"]
    if proxies:
        app.wsgi_app = TrustedProxies(app.wsgi_app, proxies, app.config["TRUSTED_PROXY_ADDRS"])


class TrustedProxies:
    """ProxyFix for requests that come from an allowed proxy address (``TRUSTED_PROXY_ADDRS``,
    as gunicorn's ``forwarded_allow_ips``); anyone else's X-Forwarded-* headers are ignored and
    the request keeps the address it came from."""

    def __init__(self, wsgi_app, count: int, networks: list) -> None:
        self.direct = wsgi_app
        self.proxied = ProxyFix(wsgi_app, x_for=count, x_proto=count, x_host=count, x_port=count)
        self.networks = networks

    def __call__(self, environ: dict, start_response):
        if self._from_proxy(environ.get("REMOTE_ADDR") or ""):
            return self.proxied(environ, start_response)
        return self.direct(environ, start_response)

    def _from_proxy(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks)


def _no_store(response: Response) -> Response:
    """Pages and JSON answers are private (badge counts, CSRF tokens): never stored by a cache."""
    if request.endpoint not in _CACHEABLE_ENDPOINTS and "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = "no-store"
    return response


def login_lifetime_seconds() -> int:
    """How long a login can live (``LOGIN_ABSOLUTE_DAYS``): the CSRF token of a page's script
    lasts as long, so a page left open never meets "the form expired"."""
    return current_app.config["LOGIN_ABSOLUTE_DAYS"] * 86400


def check_script_csrf() -> None:
    """A page script's POST or DELETE carries the page's token in ``X-CSRFToken`` (exempt from
    CSRFProtect, whose tokens last ``CSRF_TIME_LIMIT_SECONDS``); CSRFError (400) if it is wrong."""
    if not current_app.config.get("WTF_CSRF_ENABLED", True):
        return
    try:
        validate_csrf(request.headers.get("X-CSRFToken"), time_limit=login_lifetime_seconds())
    except ValidationError as exc:
        raise CSRFError(exc.args[0]) from exc
