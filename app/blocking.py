"""CPU-bound calls kept off the gevent loop, so one request's work never stalls the others."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import gevent.monkey

T = TypeVar("T")


def off_the_loop(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in gevent's threadpool under a gevent server, else right here.

    For work that releases the GIL (hashlib's scrypt and PBKDF2 do): a login's ~50 ms of
    password hashing then leaves every stream and page of the worker running meanwhile.
    """
    if gevent.monkey.is_module_patched("threading"):
        return gevent.get_hub().threadpool.apply(fn, args)
    return fn(*args)
