"""Rate limits (Flask-Limiter, counted in Redis so every worker and host shares them).

Each limit is a setting (README, "Configuration"); ``RATELIMIT_ENABLED=0`` turns them all
off. Over a limit a script client gets ``429`` JSON with ``Retry-After`` (the errors
blueprint); a page with a form gets the form back with the error on it, also ``429``.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable

from flask import Response, current_app, make_response
from flask_limiter import Limiter, RequestLimit
from flask_limiter.util import get_remote_address
from flask_login import current_user


def network_of(address: str) -> str:
    """The network a client is counted by: its IPv4 address, or its IPv6 /64 (one host's share)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def client_network() -> str:
    """This request's client network (``network_of`` its address)."""
    return network_of(get_remote_address())


limiter = Limiter(key_func=client_network)


def setting(name: str) -> Callable[[], str]:
    """A limit read from the app's configuration when a request is checked."""
    return lambda: current_app.config[name]


def per_user() -> str:
    """The logged-in user (or, before login is checked, the client address)."""
    if current_user.is_authenticated:
        return f"user:{current_user.id}"
    return f"address:{client_network()}"


def retry_after(limit: RequestLimit) -> int:
    """Seconds until ``limit`` lets the next request through (never more than its period:
    ``reset_at`` rounds up a second)."""
    return max(1, min(math.ceil(limit.reset_at - time.time()), limit.limit.get_expiry()))


def form_error(
    render: Callable[[str], str], too_many: Callable[[int], str]
) -> Callable[[RequestLimit], Response | None]:
    """An ``on_breach`` answer for a page: ``render(message)`` (the form, with the error on it), 429.
    ``too_many(seconds)`` says it, in the request's language (an ``ngettext``).

    Script clients (``Accept: application/json``) get the errors blueprint's JSON instead.
    """

    def on_breach(limit: RequestLimit) -> Response | None:
        from app.responses import wants_json

        if wants_json():
            return None
        seconds = retry_after(limit)
        message = too_many(seconds)
        response = make_response(render(message), 429)
        response.headers["Retry-After"] = str(seconds)
        return response

    return on_breach
