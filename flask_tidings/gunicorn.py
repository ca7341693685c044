"""Tidings' gunicorn worker class: gevent, plus responses that may take their connection over.

``gunicorn -c gunicorn.conf.py wsgi:app`` names :class:`StreamWorker` as its ``worker_class``,
gunicorn's documented door for a worker that treats some responses differently. It is
gunicorn's gevent worker with four changes:

* **Hand-over through the environ.** Every request gets ``environ["tidings.handover"]``, a
  :class:`Handover`. A response that wants the connection for itself (``/stream``) calls
  ``take()`` and owns the socket from then on; whatever middleware wraps the response
  iterable, the worker sees the hand-over in its own slot, consumes and closes the
  middleware's iterable (so its spans and transactions end) and leaves the connection
  alone. Nothing depends on the identity of the object the app returns.
* **Requests, not streams, count toward ``max_requests``.** A stream is not a request that
  ends; counting it would restart a worker under its own open streams.
* **Stop accepting, then carry or drain.** On SIGTERM/HUP (or when ``max_requests`` fires)
  the worker closes its listening sockets first and refuses streams asked on connections it
  already has, so no browser reconnects into a stopping worker. It then asks the owners of
  taken connections (the notification streams) to pass them to the workers that succeed it
  (``succession.py``: on a deploy the connections stay open) and to close the rest.
* **Refusals at boot** for what cannot work: TLS at gunicorn (a taken socket has no TLS
  state; terminate TLS at the proxy, see ``deploy/``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any, Protocol

import gevent
import gevent.event
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn.workers.base_async import ALREADY_HANDLED
from gunicorn.workers.ggevent import GeventWorker

from flask_tidings.handover import ENVIRON_KEY, HandoverRefused
from flask_tidings.succession import Inbox, Successors, directory

log = logging.getLogger(__name__)

# gunicorn's exit status for "this worker cannot boot": the arbiter stops instead of respawning.
WORKER_BOOT_ERROR = 3


class Owner(Protocol):
    """What takes connections over: it gives them all up when the worker stops."""

    def drain(self, successors: Successors | None = None) -> None:
        """Carry taken connections to ``successors`` where it can; close the rest (browsers
        reconnect to another worker)."""


class Closeable(Protocol):
    def close(self) -> None: ...


class Handover:
    """One request's means to take its connection over from gunicorn.

    ``refusal`` says why it cannot (HTTP/2, a stopping worker), or is None. ``take()``
    detaches the socket and returns its file descriptor: from then on the caller owns it,
    and records in ``taken`` what to close should the request fail afterwards.
    """

    __slots__ = ("_worker", "_socket", "_protocol", "taken")

    def __init__(self, worker: StreamWorker, environ: dict[str, Any]) -> None:
        self._worker = worker
        self._socket = environ.get("gunicorn.socket")
        self._protocol = environ.get("SERVER_PROTOCOL", "")
        self.taken: Closeable | None = None

    @property
    def refusal(self) -> str | None:
        """Why this connection cannot be taken over, or None."""
        if not self._worker.alive:
            return "this server is restarting; reconnect"
        if self._protocol not in ("HTTP/1.1", "HTTP/1.0"):
            # One HTTP/2 connection carries many requests: its socket is not one response's to take.
            return f"streams are served over HTTP/1.1, not {self._protocol}: leave gunicorn's HTTP/2 off"
        if self._socket is None:
            return "no socket to take over"
        return None

    def take(self, owner: Owner, adopt: Callable[[int], Closeable]) -> Closeable:
        """Detach the socket and give its descriptor to ``adopt``; ``owner`` drains it on stop.

        ``adopt`` owns the descriptor as soon as it is called (it must close it if it fails).
        """
        reason = self.refusal
        if reason is not None:
            raise HandoverRefused(reason)
        fd = self._socket.detach()
        self._worker.owners.add(owner)
        self.taken = adopt(fd)
        return self.taken

    @property
    def is_taken(self) -> bool:
        """Whether the connection left gunicorn."""
        return self._socket is not None and self._socket.fileno() == -1


class StreamWorker(GeventWorker):
    """gunicorn's gevent worker, for apps whose responses may take their connection over."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # gunicorn counts every request before the app runs; we count only those that end.
        self.request_limit, self.max_requests = self.max_requests, sys.maxsize
        self.requests_served = 0
        self.owners: set[Owner] = set()
        self._stop = gevent.event.Event()

    # -- boot ------------------------------------------------------------------------

    def init_process(self) -> None:
        """Refuse TLS at gunicorn before serving anything."""
        if self.cfg.is_ssl:
            self.log.critical(
                "Tidings does not serve TLS from gunicorn (--certfile/--keyfile): a notification "
                "stream takes its socket over, and a TLS session cannot be handed over. Terminate "
                "TLS at the proxy in front (deploy/nginx.conf, `make run-proxy`) and run gunicorn "
                "on plain HTTP behind it."
            )
            sys.exit(WORKER_BOOT_ERROR)
        super().init_process()

    def load_wsgi(self) -> None:
        """Wrap the app so every request carries its ``Handover``."""
        super().load_wsgi()
        self.served_app = self.wsgi  # the application itself (the Flask app, or its middleware)
        self.wsgi = partial(self._serve, self.served_app)

    def _open_inbox(self) -> Inbox | None:
        """Listen for connections a stopping sibling carries over (succession.py)."""
        try:
            return Inbox(directory(self.ppid), str(self.pid), lambda: self.alive, self.owners.add).open()
        except OSError as exc:
            self.log.warning("cannot take streams from stopping workers (%s); they will reconnect", exc)
            return None

    # -- per request -----------------------------------------------------------------

    def _serve(self, app: Callable, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        handover = environ[ENVIRON_KEY] = Handover(self, environ)
        try:
            body = app(environ, start_response)
        except Exception:
            if not handover.is_taken:
                raise
            log.exception("a request failed after taking its connection over; closing it")
            self._abandon(handover)
            return ALREADY_HANDLED
        if not handover.is_taken:
            self._count_request()
            return body
        try:
            # Middleware may wrap the (empty) body: run it to its end so spans and scopes close.
            for _ in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
        except Exception:
            log.exception("closing the response of a taken connection failed; closing it")
            self._abandon(handover)
        return ALREADY_HANDLED

    @staticmethod
    def _abandon(handover: Handover) -> None:
        if handover.taken is not None:
            handover.taken.close()

    def is_already_handled(self, respiter: Any) -> bool:
        """End gunicorn's keep-alive loop for a taken connection (gunicorn's intended override)."""
        if respiter is ALREADY_HANDLED:
            raise StopIteration("connection taken over by the application")
        return False

    def _count_request(self) -> None:
        self.requests_served += 1
        if self.requests_served >= self.request_limit and self.alive:
            self.log.info(
                "Autorestarting worker after %d requests (open streams are not counted).",
                self.requests_served,
            )
            self.alive = False
            self._stop.set()

    # -- stopping --------------------------------------------------------------------

    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: gunicorn's own handling, then wake the run loop to stop accepting now."""
        super().handle_exit(sig, frame)
        # Outside the signal handler, as gunicorn's gevent worker does for SIGQUIT.
        gevent.spawn(self._stop.set)

    def run(self) -> None:
        """Serve until told to stop; then stop accepting, drain taken connections, finish requests."""
        servers = []
        for sock in self.sockets:
            sock.setblocking(1)
            pool = Pool(self.worker_connections)
            server = StreamServer(sock, handle=partial(self.handle, sock), spawn=pool)
            if self.cfg.workers > 1:
                server.max_accept = 1
            server.start()
            servers.append(server)
        inbox = self._open_inbox()

        while self.alive:
            self.notify()
            self._stop.wait(1.0)

        for server in servers:
            server.close()  # first: no new connection can land on this worker
        successors = None
        if inbox is not None:
            inbox.close()  # and no sibling carries its connections here
            successors = Successors(inbox.path.parent, self.pid)
        # Carrying waits for the new workers to boot: keep telling the arbiter this one lives.
        heartbeat = gevent.spawn(self._notify_every_second)
        for owner in list(self.owners):
            try:
                owner.drain(successors)
            except Exception:
                log.exception("could not drain %r", owner)
        heartbeat.kill()
        if successors is not None:
            successors.close()
        self._finish_requests(servers)

    def _notify_every_second(self) -> None:
        while True:
            self.notify()
            gevent.sleep(1.0)

    def _finish_requests(self, servers: list[StreamServer]) -> None:
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while any(s.pool.free_count() != s.pool.size for s in servers):
            if time.monotonic() > deadline:
                self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
                for server in servers:
                    server.stop(timeout=1)
                return
            self.notify()
            gevent.sleep(0.1)


# -- server hooks: ``from flask_tidings.gunicorn import *`` in a gunicorn config file gives
# on_starting, on_exit, child_exit and post_worker_init (or call them from the file's own hooks
# of the same names).

__all__ = ["StreamWorker", "child_exit", "on_exit", "on_starting", "post_worker_init"]


def on_starting(server: Any) -> None:
    """Raise the open-files limit to its hard maximum (every open stream is a descriptor: at
    Linux's usual 1,024 a worker holds fewer than 800 streams), and give the workers a folder
    for prometheus_client's multiprocess mode, so ``/metrics`` adds up every worker."""
    import os
    import resource
    import tempfile

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        server.log.info("raised the open files limit from %s to %s", soft, hard)
    # Multiprocess mode wants an empty folder at start, named before any worker imports the app.
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.unlink(os.path.join(folder, name))
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tidings-metrics-")


def on_exit(server: Any) -> None:
    """Remove the folder where this master's workers passed streams to each other."""
    import shutil

    from flask_tidings.succession import folder_of

    shutil.rmtree(folder_of(server.pid), ignore_errors=True)


def child_exit(server: Any, worker: Any) -> None:
    """Forget a dead worker's live gauges (open streams, channels) in prometheus_client's
    multiprocess mode."""
    import os

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker: Any) -> None:
    """Refuse workers other than ``StreamWorker`` (a sync or threaded one would pin a worker per
    open tab), and keep the garbage collector's passes over a worker's streams rare."""
    if not isinstance(worker, StreamWorker):
        worker.log.critical(
            "Flask-Tidings needs its gevent worker class (worker_class = %r): a sync or threaded "
            "worker would hold one worker per open stream.",
            f"{__name__}.StreamWorker",
        )
        sys.exit(WORKER_BOOT_ERROR)  # the arbiter stops instead of respawning
    tune_garbage_collector()


def tune_garbage_collector() -> None:
    """Keep the cycle collector from costing a busy worker a large share of its CPU.

    Every Flask request leaves a reference cycle (werkzeug's URL matcher defines a recursive
    closure per match), so the collector runs often, and each full pass walked the whole app
    loaded at boot plus every open stream. What the worker loaded at boot is frozen out of
    the collector's reach (``gc.freeze``), and the youngest generation is collected every
    20,000 new objects rather than 700: the cycles are still freed, in fewer, larger passes,
    at the price of a few MB of young garbage kept between them (docs/benchmarks: "connect
    CPU, isolated").
    """
    import gc

    gc.freeze()
    gc.set_threshold(20_000, 20, 10)
