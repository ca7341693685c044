"""The ``Tidings`` extension object: created once without an app, bound with ``init_app(app)``.

Its per-app state lives in ``app.extensions["tidings"]`` (``_State``): this process's Redis
client, its hub (one pub/sub connection; one per master on a cluster) and its open streams.
All three are created on first use, so nothing exists before gunicorn forks, and a process
that forked after creating them (a pid change) builds fresh ones.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, NamedTuple

import redis
from flask import Flask, current_app, g, url_for
from markupsafe import Markup, escape
from redis.backoff import NoBackoff
from redis.retry import Retry

from flask_tidings import telemetry
from flask_tidings.events import MAX_MESSAGE_BYTES, Event, channel_for, user_key
from flask_tidings.kinds import SESSION_ENDED, SESSION_LOOKING, Kind, Kinds, NotificationRefused, session_tag
from flask_tidings.presence import MemoryPresence, Presence, UserPresence
from flask_tidings.store import Store
from flask_tidings.tally import FailureTally

log = logging.getLogger(__name__)

EXTENSION_KEY = "tidings"

DEFAULTS: dict[str, Any] = {
    "TIDINGS_REDIS_URL": None,  # None: the app's REDIS_URL, else redis://127.0.0.1:6379/0
    "TIDINGS_REDIS_CLUSTER": None,  # None: the app's REDIS_CLUSTER, else False
    "TIDINGS_HEARTBEAT_SECONDS": 15,
    "TIDINGS_RETRY_MS": 3000,
    "TIDINGS_DRAIN_RETRY_MS": 5000,
    "TIDINGS_HANDOFF_SECONDS": 10,
    "TIDINGS_MAX_STREAMS_PER_WORKER": 0,
    "TIDINGS_MAX_STREAMS_PER_USER": 32,
    "TIDINGS_HUB_PING_SECONDS": 10.0,
    # Each worker vouches for its users' presence this often; a user counts 2.5 times as long.
    "TIDINGS_PRESENCE_SECONDS": 10.0,
}


class Identity(NamedTuple):
    """Who a request is: the user's id (as the app's user model has it: an integer, a string
    or a UUID) and, optionally, which of their logins."""

    user_id: Any
    login: str | None = None


def flask_login_identity() -> Identity | None:
    """The default identity: Flask-Login's ``current_user`` (its public API), the login being
    what its session carries (``get_id()``)."""
    from flask_login import current_user

    if not current_user.is_authenticated:
        return None
    login = current_user.get_id()
    user_id = getattr(current_user, "id", None)
    return Identity(login if user_id is None else user_id, login)


def _user_id(user: Any) -> Any:
    """The app's id of ``user``: a user object's ``id``, or ``user`` itself when it is an id."""
    return user if isinstance(user, str | int | uuid.UUID) else user.id


def _lock_order(user_id: Any) -> tuple:
    """One order for any mix of ids (integers in their own order): locks never cross."""
    return (0, user_id, "") if isinstance(user_id, int) else (1, 0, user_key(user_id))


class Tidings:
    """Live notifications for a Flask app: ``notify()`` stores and publishes after commit,
    ``/stream`` delivers them as Server-Sent Events, and the page script shows them.

    ``kinds``: the notification kinds the app declares (more with ``kind()``). ``store``: where
    notifications are kept (``SQLAlchemyStore``). ``stream_decorators`` and
    ``presence_decorators``: applied to the ``/stream`` and ``POST /presence`` views, innermost
    first, as Flask's ``View.decorators`` (e.g. a rate limit).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        kinds: Iterable[Kind] = (),
        store: Store | None = None,
        stream_decorators: Iterable[Callable] = (),
        presence_decorators: Iterable[Callable] = (),
    ) -> None:
        self.kinds = Kinds(kinds)
        self.store = store
        self.stream_decorators = list(stream_decorators)
        self.presence_decorators = list(presence_decorators)
        self._pushable: list[Callable[[Any, Event], None]] = []
        self._identity: Callable[[], Identity | None] = flask_login_identity
        self._logins_open: Callable[[Collection[str]], set[str]] = set
        self._blueprint = None
        if app is not None:
            self.init_app(app)

    # -- setting up ------------------------------------------------------------------

    def init_app(self, app: Flask, *, store: Store | None = None, url_prefix: str | None = None) -> None:
        """Bind to ``app``: config defaults, the blueprint (its routes under ``url_prefix``,
        e.g. ``"/live"``: ``/live/stream``), the template helpers, and the streams a stopping
        worker carries here."""
        from flask_tidings import succession
        from flask_tidings.live import CARRIED
        from flask_tidings.views import make_blueprint

        store = store or self.store
        if store is None:
            raise RuntimeError("Tidings needs a store: Tidings(store=SQLAlchemyStore(db, Notification))")
        for key, value in DEFAULTS.items():
            app.config.setdefault(key, value)
        check = getattr(store, "check_app", None)
        if check is not None:  # e.g. SQLAlchemyStore refusing a database it cannot lock on
            check(app)
        state = app.extensions[EXTENSION_KEY] = _State(app, self, store)
        if self._blueprint is None:
            self._blueprint = make_blueprint(self)
        app.register_blueprint(self._blueprint, url_prefix=url_prefix)
        app.context_processor(lambda: {"tidings": _TemplateHelper(self)})
        succession.receive(CARRIED, lambda items: state.streams.carry_in(items))

    def kind(
        self, name: str, *, per: str | None = None, shown_as: str = "", push: bool = False, keep: int = 100
    ) -> Kind:
        """Declare a notification kind (see ``Kind``)."""
        return self.kinds.add(Kind(name, shown_as=shown_as, per=per, push=push, keep=keep))

    def on_pushable(self, callback: Callable[[Any, Event], None]) -> Callable[[Any, Event], None]:
        """Decorator: ``callback(user_id, event)`` runs after the commit that stored a notification
        of a kind declared with ``push=True`` (after it was published). It decides whether and
        when to reach the person outside the page, e.g. by queueing a job that pushes if they
        have not seen it by then (``is_looking``); it must not block, and what it raises is
        logged, never the caller's."""
        self._pushable.append(callback)
        return callback

    def identity_loader(self, loader: Callable[[], Identity | None]) -> Callable[[], Identity | None]:
        """Decorator: the function that says who the current request is (an ``Identity``, or None
        when nobody is logged in). Default: Flask-Login's ``current_user``."""
        self._identity = loader
        return loader

    def login_checker(
        self, checker: Callable[[Collection[str]], set[str]]
    ) -> Callable[[Collection[str]], set[str]]:
        """Decorator: ``checker(logins)`` returns those still valid. Streams carried to a new
        worker during a deploy are checked with it (default: every login stays valid)."""
        self._logins_open = checker
        return checker

    @property
    def current_store(self) -> Store:
        """The current app's store (``init_app``'s, else the one given to ``Tidings``)."""
        return _state().store

    @property
    def blueprint(self):
        """The ``tidings`` blueprint: ``GET /stream`` and ``GET /notifications``."""
        return self._blueprint

    # -- who is asking ---------------------------------------------------------------

    def current_identity(self) -> Identity | None:
        """The current request's ``Identity`` (computed once per request), or None."""
        if "_tidings_identity" not in g:
            g._tidings_identity = self._identity()
        return g._tidings_identity

    # -- sending ---------------------------------------------------------------------

    def notify(self, user: Any, kind: str, data: Any) -> Event:
        """Store ``user``'s notification in the current transaction; it is published to their
        streams once the transaction commits (and never if it rolls back).

        ``user`` is a user object with an ``id`` or the id itself. ``data`` is any JSON value,
        or a callable returning one, called after the user's notifications are locked: a
        count computed there sees every committed change (concurrent sends count each other).
        NotificationRefused, with nothing stored, for an undeclared kind or data that cannot
        be sent on.
        """
        declared = self.kinds.declared(kind)
        user_id = _user_id(user)
        store = self.current_store
        store.lock(user_id)
        if callable(data):
            data = data()
        payload = encode(data)
        event = store.add(user_id, kind, declared.key(data), payload, _publish_stored)
        if declared.per and hasattr(store, "trim"):
            store.trim(user_id, kind, declared.keep)
        return event

    def lock(self, *users: Any) -> None:
        """Lock these users' notifications until the current transaction ends, in id order.

        ``notify()`` locks its user when it is called; a transaction that notifies several
        users locks them all first with this, so two transactions naming the same users in
        another order wait for each other instead of deadlocking.
        """
        for user_id in sorted({_user_id(u) for u in users}, key=_lock_order):
            self.current_store.lock(user_id)

    def forget(self, user: Any, kind: str, data: Any = None) -> None:
        """Delete ``user``'s stored notification of ``kind`` (the one ``data`` would replace), in
        the current transaction: fresh tabs stop replaying it."""
        self.current_store.forget(_user_id(user), self.kinds.declared(kind).key(data))

    def publish(self, user: Any, kind: str, data: Any) -> bool:
        """Send an ephemeral event to ``user``'s open streams now: not stored, not replayed.
        False when Redis cannot be reached."""
        self.kinds.declared(kind)
        encode(data)
        return _state().publish(_user_id(user), Event(name=kind, data=data, timestamp=time.time()))

    def end_login(self, user: Any, login: str) -> None:
        """Close the open streams of one login of ``user``, in every worker and on every host."""
        event = Event(name=SESSION_ENDED, data={"session": session_tag(login)}, timestamp=time.time())
        _state().publish(_user_id(user), event)

    def end_user(self, user: Any) -> None:
        """Close every open stream of ``user``, in every worker and on every host."""
        event = Event(name=SESSION_ENDED, data={"all": True}, timestamp=time.time())
        _state().publish(_user_id(user), event)

    # -- reading ---------------------------------------------------------------------

    def latest_id(self, user: Any) -> int:
        """The newest stored notification id of ``user``: where a rendered page's stream resumes."""
        return self.current_store.latest_id(_user_id(user))

    def channel(self, user: Any) -> str:
        """The Redis channel carrying ``user``'s notifications."""
        return channel_for(_user_id(user))

    def follow(self, user: Any, timeout: float = 1.0) -> Iterator[str | None]:
        """Every message published on ``user``'s channel, as it comes (None after ``timeout``
        seconds of quiet, so a caller can stop); SSUBSCRIBE on the owning node of a cluster."""
        state = _state()
        channel = self.channel(user)
        pubsub = state.redis.pubsub()
        if state.cluster:
            pubsub.ssubscribe(channel)
            read = lambda: pubsub.get_sharded_message(timeout=timeout)  # noqa: E731
        else:
            pubsub.subscribe(channel)
            read = lambda: pubsub.get_message(timeout=timeout)  # noqa: E731
        try:
            while True:
                message = read()
                if message and message["type"] in ("message", "smessage"):
                    data = message["data"]
                    yield data.decode() if isinstance(data, bytes) else data
                elif message is None:
                    yield None
        finally:
            pubsub.close()

    # -- presence ----------------------------------------------------------------------

    def presence_of(self, users: Iterable[Any]) -> dict[Any, UserPresence]:
        """Each user's presence (by id): connected on any worker or host, looking (a tab of
        theirs is visible), and when last connected (Unix seconds, or None). One round trip."""
        ids = list(dict.fromkeys(_user_id(u) for u in users))
        found = _state().presence.of(user_key(i) for i in ids)
        return {i: found[user_key(i)] for i in ids}

    def is_online(self, user: Any) -> bool:
        """Whether ``user`` has a stream open on any worker or host (within the presence TTL)."""
        return self.presence_of([user])[_user_id(user)].online

    def is_looking(self, user: Any) -> bool:
        """Whether a tab of ``user``'s is visible now, on any device."""
        return self.presence_of([user])[_user_id(user)].looking

    def last_seen(self, user: Any) -> float | None:
        """When ``user`` last had a stream open (Unix seconds; now while they do), or None."""
        return self.presence_of([user])[_user_id(user)].last_seen

    @property
    def presence_settle_seconds(self) -> float:
        """How long "not looking" may be unsettled after a tab hid (``UserPresence.settled``):
        a decision that can wait should wait this long once."""
        return _state().presence.settle

    def presence_counts(self) -> tuple[int, int]:
        """How many users are connected, and how many looking, across every worker and host."""
        return _state().presence.counts()

    def set_looking(self, identity: Identity, looking: bool) -> bool:
        """Mark the streams of ``identity``'s login as looking or not, on whichever worker holds
        them (``POST /presence`` calls it). False when Redis cannot be reached."""
        data = {"session": session_tag(identity.login or ""), "looking": bool(looking)}
        return _state().publish(
            identity.user_id, Event(name=SESSION_LOOKING, data=data, timestamp=time.time())
        )

    # -- this process ----------------------------------------------------------------

    @property
    def redis(self) -> redis.Redis:
        """This process's Redis client (a ``RedisCluster`` in cluster mode)."""
        return _state().redis

    def use_redis(self, app: Flask, client: redis.Redis | None) -> None:
        """Publish through ``client`` in this process (tests: a fakeredis); None: the app's own."""
        _state(app).redis = client

    def where(self) -> str:
        """Where this app's notifications travel, for people: the Redis URL and mode."""
        state = _state()
        return ("cluster seeded by " if state.cluster else "") + state.redis_url

    def check_ready(self, wait: float = 1.0) -> str | None:
        """None when this worker can deliver (Redis answers, the hub is connected); else why not."""
        from flask_tidings.hub import StreamingUnavailable

        state = _state()
        if state.in_memory:
            return None
        try:
            state.redis.ping()
        except redis.RedisError as exc:
            return f"redis: {exc.__class__.__name__}: {exc}"
        try:
            hub = state.hub
            hub.start()
            if not hub.connected.wait(wait):
                return "hub: this worker's pub/sub connection to Redis is down"
        except StreamingUnavailable as exc:
            return f"hub: {exc}"
        return None

    def stats(self, app: Flask | None = None) -> dict[str, Any]:
        """This process's stream counts (when its hub runs) and raw store reads."""
        from flask_tidings.rawsql import RawSelect

        state = (app or current_app).extensions.get(EXTENSION_KEY)
        data: dict[str, Any] = {"raw_sql_statements": RawSelect.executed}
        if state is not None and state.hub_started:
            data.update(state.hub.stats())
        return data


def encode(data: Any) -> str:
    """``data`` as the JSON a browser gets; NotificationRefused if it cannot be."""
    import json

    try:
        payload = json.dumps(data, allow_nan=False)
    except (ValueError, TypeError) as exc:
        raise NotificationRefused(f"the data cannot be sent as JSON: {exc}") from None
    except RecursionError:
        raise NotificationRefused("the data is nested too deeply") from None
    if len(payload) > MAX_MESSAGE_BYTES - 1024:
        raise NotificationRefused(
            f"the data is {len(payload)} bytes of JSON; at most {MAX_MESSAGE_BYTES - 1024}"
        )
    return payload


def _state(app: Flask | None = None) -> _State:
    return (app or current_app).extensions[EXTENSION_KEY]


def _publish_stored(user_id: Any, event: Event) -> None:
    """After a commit: publish a stored notification (the store's ``on_commit``), then hand a
    pushable one to the app's ``on_pushable`` callbacks."""
    started = time.perf_counter()
    state = _state()
    if state.publish(user_id, event):
        telemetry.COMMIT_TO_PUBLISH.observe(time.perf_counter() - started)
    kind = state.ext.kinds.get(event.name)
    if kind is not None and kind.push:
        for callback in state.ext._pushable:
            try:
                callback(user_id, event)
            except Exception:  # the notification is stored and published: never the sender's error
                log.exception("the on_pushable callback %s failed", getattr(callback, "__name__", callback))


class _TemplateHelper:
    """``tidings`` in templates: ``{{ tidings.attributes() }}`` on ``<body>``, ``{{ tidings.scripts() }}``."""

    def __init__(self, ext: Tidings) -> None:
        self._ext = ext

    def attributes(self, replay: bool = False) -> Markup:
        """The ``data-`` attributes the page script starts from; empty when nobody is logged in.

        The stream resumes after the newest notification stored when the page was rendered (the
        page shows the state itself); ``replay=True``: it replays every stored one first."""
        import json

        who = self._ext.current_identity()
        if who is None:
            return Markup("")
        state = _state()
        values = {
            "data-stream-url": url_for("tidings.stream"),
            "data-poll-url": url_for("tidings.notifications"),
            "data-presence-url": url_for("tidings.presence"),
            "data-login-url": state.login_url(),
            "data-last-event-id": "0" if replay else str(self._ext.latest_id(who.user_id)),
            "data-event-kinds": json.dumps(self._ext.kinds.for_page(), separators=(",", ":")),
            # Tabs of one login share one stream over a BroadcastChannel and a Web Lock of this name.
            "data-stream-scope": f"{who.user_id}-{session_tag(who.login or '')}",
        }
        return Markup(" ".join(f'{name}="{escape(value)}"' for name, value in values.items()))

    def scripts(self) -> Markup:
        """The ``<script>`` tags of the browser client (``window.Tidings``)."""
        tags = [
            f'<script src="{escape(url_for("tidings.static", filename=name))}"></script>'
            for name in ("tidings-core.js", "tidings.js")
        ]
        return Markup("\n".join(tags))


class _State:
    """One app's engine in this process."""

    def __init__(self, app: Flask, ext: Tidings, store: Store) -> None:
        self.app = app
        self.ext = ext
        self.store = store
        config = app.config
        self.redis_url = config["TIDINGS_REDIS_URL"] or config.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
        cluster = config["TIDINGS_REDIS_CLUSTER"]
        self.cluster = bool(config.get("REDIS_CLUSTER", False) if cluster is None else cluster)
        # memory://<name>: the in-process backend of fast tests (memory.py), no Redis at all.
        self.in_memory = self.redis_url.startswith("memory://")
        self._pid = os.getpid()
        self._redis: redis.Redis | None = None
        self._hub = None
        self._streams = None
        self._presence: Presence | None = None
        self.publish_failures = FailureTally(log, "publish to Redis")

    def _forked(self) -> None:
        if self._pid != os.getpid():
            self._pid, self._redis, self._hub, self._streams = os.getpid(), None, None, None
            self._presence = None
            self.publish_failures = FailureTally(log, "publish to Redis")

    def login_url(self) -> str:
        """Where a logged-out page goes: Flask-Login's ``login_view``, else the site's root."""
        manager = getattr(self.app, "login_manager", None)
        view = getattr(manager, "login_view", None)
        return url_for(view) if view else "/"

    @property
    def redis(self) -> redis.Redis:
        self._forked()
        if self._redis is None and self.in_memory:
            raise RuntimeError(
                f"{self.redis_url} is the in-memory pub/sub of tests: there is no Redis client"
            )
        if self._redis is None and self.cluster:
            # Per node a pool of at most 8, as below; MOVED and failovers are redis-py's to follow.
            self._redis = redis.RedisCluster.from_url(
                self.redis_url,
                max_connections=8,
                socket_connect_timeout=1,
                socket_timeout=2,
                health_check_interval=30,
            )
        if self._redis is None:
            # Fail fast, no retries: a send must not hang while Redis is away; replay covers it.
            # A small pool that greenlets wait for: a burst of connects (a deploy) or sends must
            # not open a Redis connection per request; Redis connections stay flat in traffic.
            pool = redis.BlockingConnectionPool.from_url(
                self.redis_url,
                max_connections=8,
                timeout=2,
                socket_connect_timeout=1,
                socket_timeout=2,
                health_check_interval=30,
            )
            self._redis = redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
        return self._redis

    @redis.setter
    def redis(self, client: redis.Redis) -> None:
        self._forked()
        self._redis = client
        self._presence = None

    def publish(self, user_id: Any, event: Event) -> bool:
        """PUBLISH (SPUBLISH on a cluster) on the user's channel; False, and a summed-up warning,
        when Redis is away: the notification is stored, and streams re-read the store when
        their hub reconnects."""
        try:
            if self.in_memory:
                from flask_tidings.memory import MemoryBroker

                MemoryBroker.named(self.redis_url).publish(channel_for(user_id), event.to_json())
            elif self.cluster:
                self.redis.spublish(channel_for(user_id), event.to_json())
            else:
                self.redis.publish(channel_for(user_id), event.to_json())
        except redis.RedisError as exc:
            telemetry.PUBLISH_FAILURES.inc()
            self.publish_failures.failed(exc)
            return False
        self.publish_failures.succeeded()
        return True

    @property
    def presence(self) -> Presence:
        self._forked()
        if self._presence is None:
            interval = float(self.app.config["TIDINGS_PRESENCE_SECONDS"])
            if self.in_memory:
                self._presence = MemoryPresence.named(self.redis_url, interval)
            else:
                self._presence = Presence(self.redis, interval)
        return self._presence

    @property
    def hub(self):
        self._forked()
        if self._hub is None:
            config = self.app.config
            options = {
                "ping_interval": float(config["TIDINGS_HUB_PING_SECONDS"]),
                "key_of": self.ext.kinds.key_of,
            }
            if self.in_memory:
                from flask_tidings.memory import MemoryBroker, MemoryHub

                self._hub = MemoryHub(MemoryBroker.named(self.redis_url), options["key_of"])
            elif self.cluster:
                from flask_tidings.shards import ShardedHub

                self._hub = ShardedHub.for_url(self.redis_url, **options)
            else:
                from flask_tidings.hub import Hub

                self._hub = Hub.for_url(self.redis_url, **options)
        return self._hub

    @property
    def streams(self):
        self._forked()
        if self._streams is None:
            from flask_tidings.live import Streams

            app, ext, store, config = self.app, self.ext, self.store, self.app.config

            def read_store(user_id: str, since_id: int) -> list[Event]:
                with app.app_context():
                    return store.since_id(user_id, since_id)

            def logins(tokens: Collection[str]) -> set[str]:
                with app.app_context():
                    return ext._logins_open(tokens)

            self._streams = Streams(
                self.hub,
                read_store,
                heartbeat=float(config["TIDINGS_HEARTBEAT_SECONDS"]),
                capacity=int(config["TIDINGS_MAX_STREAMS_PER_WORKER"]),
                cap=self._cap(int(config["TIDINGS_MAX_STREAMS_PER_USER"])),
                drain_retry_ms=int(config["TIDINGS_DRAIN_RETRY_MS"]),
                handoff_seconds=float(config["TIDINGS_HANDOFF_SECONDS"]),
                open_logins=logins,
                presence=self.presence,
            )
        return self._streams

    def _cap(self, limit: int):
        if self.in_memory:
            from flask_tidings.memory import MemoryCap

            return MemoryCap(limit)
        from flask_tidings.caps import StreamCap

        return StreamCap(self.redis, limit)

    @property
    def hub_started(self) -> bool:
        """Whether this process has a hub (without creating one)."""
        return self._hub is not None and self._pid == os.getpid()
