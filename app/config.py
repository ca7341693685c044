"""Configuration read from the environment (see the table in README.md)."""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path


def _number_env(name: str, default, minimum, kind, maximum=float("inf")):
    """Read a number (at least ``minimum``, at most ``maximum``) of ``kind`` (int or float) from
    the environment, refusing nonsense loudly."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise RuntimeError(
            f"{name} must be {'an integer' if kind is int else 'a number'}, got {raw!r}"
        ) from None
    if not value >= minimum or value == float("inf"):
        raise RuntimeError(f"{name} must be at least {minimum}, got {raw}")
    if value > maximum:
        raise RuntimeError(f"{name} must be at most {maximum}, got {raw}")
    return value


def _int_env(name: str, default: int, minimum: int = 1) -> int:
    return _number_env(name, default, minimum, int)


def _float_env(name: str, default: float, minimum: float = 0.1, maximum: float = float("inf")) -> float:
    """A number of seconds."""
    return _number_env(name, default, minimum, float, maximum)


def kept_once(path: Path, make: Callable[[], bytes]) -> bytes:
    """The contents of ``path``, made by ``make()`` the first time: written to a file of this
    process's own, then linked into place, so processes starting at once all read the one that
    won, never a half-written file."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    mine = path.with_name(f".{path.name}.{os.getpid()}")
    with os.fdopen(os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        fh.write(make())
    try:
        os.link(mine, path)
    except FileExistsError:  # another process was first: its file is the one
        pass
    finally:
        os.unlink(mine)
    return path.read_bytes()


def _secret_key(instance_path: Path) -> str:
    """Return SECRET_KEY from the environment, or one generated once and kept in instance/."""
    key = os.environ.get("SECRET_KEY")
    if key:
        return key
    if os.environ.get("APP_ENV") == "production":
        raise RuntimeError("SECRET_KEY must be set when APP_ENV=production")
    return (
        kept_once(instance_path / "secret_key", lambda: secrets.token_urlsafe(48).encode()).decode().strip()
    )


# Every rate limit, as Flask-Limiter's strings ("N per second|minute|hour|day", ";" between several).
RATE_LIMITS = {
    "LOGIN_RATE_PER_ADDRESS": "30 per minute",  # login attempts from one client address
    "REGISTER_RATE": "10 per hour",  # registrations from one client address
    "SEND_RATE": "30 per minute",  # private messages one user sends
    "TYPING_RATE": "40 per minute",  # "is typing" signals one user sends
    "API_RATE": "6000 per minute",  # notifications one service key publishes (a batch counts each)
    "EXPORT_RATE": "10 per hour",  # exports one user starts
    "STREAM_RATE": "120 per minute",  # /stream connections one user opens
    "PRESENCE_RATE": "120 per minute",  # "a tab is looking / no longer" changes one user's pages say
}


# Login throttling (app/auth/throttle.py); README "Configuration" says what each means.
LOGIN_THROTTLE = {
    "LOGIN_FAILURE_WINDOW_SECONDS": 900,
    "LOGIN_FREE_FAILURES": 5,
    "LOGIN_MAX_DELAY_SECONDS": 60,
    "LOGIN_DEVICE_FAILURES": 10,
    "LOGIN_ACCOUNT_ALERT_FAILURES": 50,
}


def _public_url(production: bool) -> str | None:
    """``PUBLIC_URL``: required in production, where a link in a mail must not take its host
    from a request (a forged Host header would send a reset link to someone else's site)."""
    url = (os.environ.get("PUBLIC_URL") or "").rstrip("/") or None
    if production and not url:
        raise RuntimeError(
            "PUBLIC_URL must be set when APP_ENV=production (e.g. https://tidings.example.org)"
        )
    return url


LOOPBACK = "127.0.0.1,::1"

# The push services of the major browsers (Chrome, Edge, Firefox, Safari): a subscription must
# point at one of these origins (``*.`` allows any subdomain).
PUSH_SERVICES = (
    "https://fcm.googleapis.com,https://updates.push.services.mozilla.com,"
    "https://web.push.apple.com,https://*.notify.windows.com"
)


def push_origins(raw: str) -> tuple[str, ...]:
    """``PUSH_ALLOWED_ORIGINS``: https origins (``https://host[:port]``, or ``https://*.domain``)."""
    origins = []
    for part in raw.split(","):
        origin = part.strip().lower().rstrip("/")
        if not origin:
            continue
        host = origin.removeprefix("https://")
        if not origin.startswith("https://") or not host or "/" in host or "@" in host:
            raise RuntimeError(f"PUSH_ALLOWED_ORIGINS: {part.strip()!r} is not an https origin")
        origins.append(origin)
    return tuple(origins)


def vapid_subject(raw: str | None, public_url: str | None, sender: str) -> str:
    """``VAPID_SUBJECT``: how a push service reaches the site's operator, a ``mailto:`` or
    ``https:`` URL (Apple refuses others). Unset: ``PUBLIC_URL`` if https, else the mail sender."""
    if raw:
        subject = raw.strip()
    elif public_url and public_url.startswith("https://"):
        subject = public_url
    else:
        address = sender.rsplit("<", 1)[-1].rstrip(">").strip()
        subject = f"mailto:{address}"
    if subject.startswith("mailto:"):
        local, _, domain = subject.removeprefix("mailto:").partition("@")
        if local and domain and " " not in subject:
            return subject
    elif subject.startswith("https://") and len(subject) > len("https://") and " " not in subject:
        return subject
    raise RuntimeError(f"VAPID_SUBJECT must be a mailto: or https: URL, got {subject!r}")


def proxy_networks(raw: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``TRUSTED_PROXY_ADDRS``: addresses or networks (CIDR), separated by commas."""
    try:
        return [ipaddress.ip_network(part.strip(), strict=False) for part in raw.split(",") if part.strip()]
    except ValueError as exc:
        raise RuntimeError(f"TRUSTED_PROXY_ADDRS: {exc}") from None


def refuse_exposed_proxy_trust(binds: list[str], environ: dict[str, str]) -> str | None:
    """Why gunicorn must not start (else None): it believes a proxy's forwarded headers
    (``TRUSTED_PROXIES``) on an address others can reach, with no ``TRUSTED_PROXY_ADDRS`` saying
    which peers are the proxy; anyone reaching it directly could then pick their own address."""
    if not int(environ.get("TRUSTED_PROXIES") or 0) or environ.get("TRUSTED_PROXY_ADDRS"):
        return None
    exposed = [bind for bind in binds if not _local_only(bind)]
    if not exposed:
        return None
    return (
        f"TRUSTED_PROXIES is set and gunicorn listens on {', '.join(exposed)}, which others can reach: "
        "set TRUSTED_PROXY_ADDRS to the proxy's addresses (e.g. 10.0.0.5 or 10.0.0.0/24), or bind "
        "to 127.0.0.1 / a unix socket behind a proxy on the same host"
    )


def _local_only(bind: str) -> bool:
    if bind.startswith(("unix:", "fd://")):
        return True
    host = bind.rsplit(":", 1)[0].strip("[]") if ":" in bind else bind
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def load_config(instance_path: str) -> dict:
    """Build the app's configuration from the environment."""
    instance = Path(instance_path)
    instance.mkdir(parents=True, exist_ok=True)
    production = os.environ.get("APP_ENV") == "production"
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    cluster = os.environ.get("REDIS_CLUSTER", "0") == "1"
    queue_url = os.environ.get("QUEUE_REDIS_URL") or None
    if cluster and not queue_url:
        raise RuntimeError(
            "REDIS_CLUSTER=1 needs QUEUE_REDIS_URL: RQ keeps its queue in a plain (non-cluster) Redis"
        )
    return {
        "APP_ENV": os.environ.get("APP_ENV") or None,
        "SECRET_KEY": _secret_key(instance),
        "SQLALCHEMY_DATABASE_URI": os.environ.get("DATABASE_URL") or f"sqlite:///{instance / 'tidings.db'}",
        "REDIS_URL": redis_url,
        # REDIS_URL is a seed node of a Redis Cluster: notifications use sharded pub/sub
        # (flask_tidings/shards.py); the background queue stays on QUEUE_REDIS_URL.
        "REDIS_CLUSTER": cluster,
        "QUEUE_REDIS_URL": queue_url or redis_url,
        # Flask-Tidings' settings (docs/extension.md), from this site's environment names; it
        # takes REDIS_URL and REDIS_CLUSTER above as its own.
        "TIDINGS_HEARTBEAT_SECONDS": _int_env("SSE_HEARTBEAT_SECONDS", 15),
        "TIDINGS_RETRY_MS": _int_env("SSE_RETRY_MS", 3000),
        # A stopping worker tells each stream to come back after a random 0.5 s to this long.
        "TIDINGS_DRAIN_RETRY_MS": _int_env("SSE_DRAIN_RETRY_MS", 5000),
        # How long a stopping worker waits for the new workers to take its open streams over;
        # 0: never carry them, close them (with the retry: above).
        "TIDINGS_HANDOFF_SECONDS": _int_env("SSE_HANDOFF_SECONDS", 10, minimum=0),
        # Open streams one worker holds before answering 503; 0: what its open-files limit allows.
        "TIDINGS_MAX_STREAMS_PER_WORKER": _int_env("MAX_STREAMS_PER_WORKER", 0),
        # Open streams one user may hold across every worker and host (0: no cap); beyond: 429.
        "TIDINGS_MAX_STREAMS_PER_USER": _int_env("MAX_STREAMS_PER_USER", 32, minimum=0),
        # Each worker writes who has a stream open, and who is looking, this often; a user stays
        # "online" 2.5 times as long after their last stream closes (or their host dies).
        "TIDINGS_PRESENCE_SECONDS": _float_env("PRESENCE_INTERVAL_SECONDS", 10.0),
        # Kinds services may send through the publish API, with how each is shown (app/service_kinds.py).
        "NOTIFICATION_KINDS_FILE": os.environ.get("NOTIFICATION_KINDS_FILE") or None,
        "MESSAGES_PER_PAGE": _int_env("MESSAGES_PER_PAGE", 25),
        "USERS_PER_PAGE": _int_env("USERS_PER_PAGE", 25),
        "EXPORT_DIR": os.environ.get("EXPORT_DIR") or str(instance / "exports"),
        # Finished exports (files, rows, stored progress) are removed after this many hours.
        "EXPORT_RETENTION_HOURS": float(os.environ.get("EXPORT_RETENTION_HOURS") or 24),
        "TASK_QUEUE": "tidings-tasks",
        # A pause per exported message: 0 in production; demos and tests slow the bar down.
        "EXPORT_SLOWDOWN_SECONDS": float(os.environ.get("EXPORT_SLOWDOWN_SECONDS") or 0),
        # Forms are small; anything bigger than this is refused with 413.
        "MAX_CONTENT_LENGTH": 64 * 1024,
        # The publish API's data, as compact JSON: a toast's fields, not a document.
        "API_MAX_DATA_BYTES": _int_env("API_MAX_DATA_BYTES", 8192, minimum=2),
        "BOOTSTRAP_SERVE_LOCAL": True,
        "SESSION_COOKIE_SAMESITE": "Lax",
        "REMEMBER_COOKIE_SAMESITE": "Lax",
        "SESSION_COOKIE_HTTPONLY": True,
        # Production is served over HTTPS (by the proxy): cookies never travel in the clear.
        "SESSION_COOKIE_SECURE": production,
        "REMEMBER_COOKIE_SECURE": production,
        "REMEMBER_COOKIE_HTTPONLY": True,
        # A login ends on the server this long after its last page, and this long after it began
        # (app/models.py Login); the remember-me cookie lives as long as the second.
        "LOGIN_IDLE_HOURS": _int_env("LOGIN_IDLE_HOURS", 72),
        "LOGIN_ABSOLUTE_DAYS": _int_env("LOGIN_ABSOLUTE_DAYS", 30),
        # How long a form's CSRF token lasts (Flask-WTF's default). The reply box and the
        # conversation page's script are exempt: theirs last as long as the login.
        "WTF_CSRF_TIME_LIMIT": _int_env("CSRF_TIME_LIMIT_SECONDS", 3600),
        # Proxies in front whose X-Forwarded-* headers are trusted (1 behind nginx; 0: none), and
        # the addresses they connect from (app/security.py): headers from anyone else are ignored.
        "TRUSTED_PROXIES": _int_env("TRUSTED_PROXIES", 0, minimum=0),
        "TRUSTED_PROXY_ADDRS": proxy_networks(os.environ.get("TRUSTED_PROXY_ADDRS") or LOOPBACK),
        # Rate limits (Flask-Limiter, counted in Redis): RATELIMIT_ENABLED=0 turns them all off.
        "RATELIMIT_ENABLED": os.environ.get("RATELIMIT_ENABLED", "1") != "0",
        "RATELIMIT_STORAGE_URI": os.environ.get("RATELIMIT_STORAGE_URI")
        or (redis_url.replace("redis://", "redis+cluster://", 1).rsplit("/", 1)[0] if cluster else redis_url),
        "RATELIMIT_KEY_PREFIX": "tidings-limits",
        # X-RateLimit-* headers on every answer would tell an attacker when to strike next; only
        # a 429 says when to come back (Retry-After).
        "RATELIMIT_HEADERS_ENABLED": False,
        # Redis away: count in this process's memory until it is back (one warning when it goes,
        # one line when it returns), rather than answer 500 or log a traceback per request.
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "RATELIMIT_SWALLOW_ERRORS": True,
        **{name: os.environ.get(name) or default for name, default in RATE_LIMITS.items()},
        # Failed logins (app/auth/throttle.py): counted per account and client network over a
        # window; past the free ones a network waits 1, 2, 4 … s (up to the maximum) per attempt.
        # Browsers that logged into the account before have their own budget and never wait.
        **{name: _int_env(name, default) for name, default in LOGIN_THROTTLE.items()},
        "REMEMBER_COOKIE_DURATION": timedelta(days=_int_env("LOGIN_ABSOLUTE_DAYS", 30)),
        # Mail (Flask-Mail's names): unset MAIL_SERVER shows mails in the worker's terminal.
        "MAIL_SERVER": os.environ.get("MAIL_SERVER") or None,
        "MAIL_PORT": _int_env("MAIL_PORT", 25),
        "MAIL_USE_TLS": os.environ.get("MAIL_USE_TLS", "0") == "1",
        "MAIL_USE_SSL": os.environ.get("MAIL_USE_SSL", "0") == "1",
        "MAIL_USERNAME": os.environ.get("MAIL_USERNAME") or None,
        "MAIL_PASSWORD": os.environ.get("MAIL_PASSWORD") or None,
        "MAIL_DEFAULT_SENDER": os.environ.get("MAIL_DEFAULT_SENDER") or "Tidings <noreply@localhost>",
        # Where links in mails point (e.g. https://tidings.example.org); required in production.
        # Elsewhere, unset: the origin of the request that asked for the mail, but only when its
        # host is one of MAIL_LINK_HOSTS (loopback unless set): a forged Host gets no mail.
        "PUBLIC_URL": _public_url(production),
        "MAIL_LINK_HOSTS": frozenset(
            h.strip().lower().strip("[]")
            for h in (os.environ.get("MAIL_LINK_HOSTS") or "127.0.0.1,localhost,::1").split(",")
            if h.strip()
        ),
        # How long a password-reset link works (it also stops once used).
        "RESET_TOKEN_SECONDS": _int_env("RESET_TOKEN_SECONDS", 1800),
        "RESET_RATE": os.environ.get("RESET_RATE") or "5 per hour",
        # Web Push (app/push/, docs/push.md): the site's VAPID key (else made once in instance/),
        # the address push services may write to, the push services subscriptions may point at,
        # how long a pushable notification waits (unread, no tab looking) before it is pushed,
        # how long a push service keeps it for a device that is off, and how long it may take.
        "VAPID_PRIVATE_KEY": os.environ.get("VAPID_PRIVATE_KEY") or None,
        "VAPID_SUBJECT": vapid_subject(
            os.environ.get("VAPID_SUBJECT"),
            _public_url(production),
            os.environ.get("MAIL_DEFAULT_SENDER") or "Tidings <noreply@localhost>",
        ),
        "PUSH_ALLOWED_ORIGINS": push_origins(os.environ.get("PUSH_ALLOWED_ORIGINS") or PUSH_SERVICES),
        "PUSH_DELAY_SECONDS": _float_env("PUSH_DELAY_SECONDS", 10.0, minimum=0),
        "PUSH_TTL_SECONDS": _int_env("PUSH_TTL_SECONDS", 86400, minimum=0),
        # At most 15: a job's deliveries stop at 40 s and RQ ends it at 60 s (app/push/sending.py).
        "PUSH_TIMEOUT_SECONDS": _float_env("PUSH_TIMEOUT_SECONDS", 10.0, minimum=0.5, maximum=15),
        # A bearer token that opens /metrics to other hosts (localhost may always read it).
        "METRICS_TOKEN": os.environ.get("METRICS_TOKEN") or None,
    }
