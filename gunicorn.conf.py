"""gunicorn settings for Tidings: gevent workers holding many long-lived streams.

Nothing here creates an app, a Redis client or a database connection: each worker builds
its own after the fork (no preload), once gevent has patched the standard library.
"""

import os
import sys

port = os.environ.get("PORT", "8000")
bind = [os.environ.get("BIND") or f"127.0.0.1:{port}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gunicorn's gevent worker, extended: /stream takes its connection over, streams do not count
# toward max_requests, and a stopping worker stops accepting before it drains (flask_tidings/gunicorn.py).
worker_class = "flask_tidings.gunicorn.StreamWorker"
# Concurrent requests per worker. Open streams are not among them: once its replay is written
# a stream is a socket the worker writes to, with no greenlet (flask_tidings/live.py).
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "1000"))
preload_app = False
# The arbiter's liveness timeout: gevent workers report every second, streams or not.
timeout = 30
# On SIGTERM/HUP a worker stops accepting, carries its streams to the new workers (or closes them),
# and has this long for the requests still running.
graceful_timeout = 10
keepalive = 5
backlog = 4096
accesslog = os.environ.get("ACCESS_LOG") or None
errorlog = "-"
# Several servers (tests, benchmarks) may run side by side: no shared control socket.
control_socket_disable = True
loglevel = os.environ.get("LOG_LEVEL", "info")


def on_starting(server):
    """Refuse to believe forwarded headers on an exposed address without an allow-list; then
    Flask-Tidings' own start (the open-files limit, the metrics folder)."""
    from app.config import refuse_exposed_proxy_trust
    from flask_tidings.gunicorn import on_starting as tidings_on_starting

    refusal = refuse_exposed_proxy_trust(list(server.cfg.bind), dict(os.environ))
    if refusal:
        server.log.critical("not starting: %s", refusal)
        sys.exit(1)
    tidings_on_starting(server)


# Flask-Tidings' own hooks: the carrying folder goes with the master, a dead worker's live gauges
# with it, and a worker of another class refuses to boot.
from flask_tidings.gunicorn import child_exit, on_exit  # noqa: E402,F401


def post_worker_init(worker):
    """Flask-Tidings' checks; then, when the benchmark asks, this worker's counters every second."""
    from flask_tidings.gunicorn import post_worker_init as tidings_post_worker_init

    tidings_post_worker_init(worker)
    metrics_dir = os.environ.get("TIDINGS_METRICS_DIR")
    if metrics_dir:
        import gevent

        from app.metrics import counters

        def dump_metrics():
            while True:
                counters.write(metrics_dir, worker.served_app)
                gevent.sleep(1.0)

        gevent.spawn(dump_metrics)
