"""gunicorn settings for Tidings: gevent workers holding many long-lived streams.

Nothing here creates an app, a Redis client or a database connection: each worker builds
its own after the fork (no preload), once gevent has patched the standard library.
"""

import os
import resource
import signal
import sys

port = os.environ.get("PORT", "8000")
bind = [os.environ.get("BIND") or f"127.0.0.1:{port}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "gevent"
# Concurrent requests per worker. Open streams are not among them: once its replay is written
# a stream is a socket the worker writes to, with no greenlet (app/notifications/live.py).
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
preload_app = False
# The arbiter's liveness timeout: gevent workers report every second, streams or not.
timeout = 30
# On SIGTERM/HUP a worker closes its streams at once (see post_worker_init); this bounds the rest.
graceful_timeout = 10
keepalive = 5
backlog = 4096
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
# Several servers (tests, benchmarks) may run side by side: no shared control socket.
control_socket_disable = True
loglevel = os.environ.get("LOG_LEVEL", "info")


def on_starting(server):
    """Raise the open-files limit to its hard maximum: every stream is a file descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        server.log.info("raised open files limit from %s to %s", soft, hard)


def post_worker_init(worker):
    """Refuse non-gevent workers, and end this worker's streams promptly on SIGTERM."""
    import gevent
    import gevent.monkey

    if not gevent.monkey.is_module_patched("socket"):
        worker.log.critical(
            "Tidings needs gevent workers (worker_class = 'gevent'): a sync or threaded worker "
            "would hold one worker per open stream. Start with: gunicorn -c gunicorn.conf.py wsgi:app"
        )
        sys.exit(3)  # gunicorn's boot-error code: the arbiter stops instead of respawning

    # /stream's response takes its socket over and returns gunicorn's ALREADY_HANDLED (see
    # app/notifications/routes.py). gunicorn's hook for that sentinel is meant to be overridden
    # by workers that must then leave the connection alone: end the keep-alive loop at once
    # instead of reading a next request from a socket that now belongs to the stream.
    already_handled = worker.is_already_handled

    def is_already_handled(respiter):
        if already_handled(respiter):
            raise StopIteration("handed over to a notification stream")
        return False

    worker.is_already_handled = is_already_handled
    state = getattr(worker.wsgi, "extensions", {}).get("tidings.realtime")
    if state is not None:
        state.handover = True

    stop_accepting = worker.handle_exit

    def handle_exit(sig, frame):
        stop_accepting(sig, frame)
        if state is not None and state.hub_started:
            # Outside the signal handler, like gunicorn's own handle_quit.
            gevent.spawn(state.hub.shutdown)

    signal.signal(signal.SIGTERM, handle_exit)

    metrics_dir = os.environ.get("TIDINGS_METRICS_DIR")
    if metrics_dir:
        from app.metrics import counters

        def dump_metrics():
            while True:
                counters.write(metrics_dir, worker.wsgi)
                gevent.sleep(1.0)

        gevent.spawn(dump_metrics)
