"""gunicorn settings for Tidings: gevent workers holding many long-lived streams.

Nothing here creates an app, a Redis client or a database connection: each worker builds
its own after the fork (no preload), once gevent has patched the standard library.
"""

import os
import resource
import sys
import tempfile

port = os.environ.get("PORT", "8000")
bind = [os.environ.get("BIND") or f"127.0.0.1:{port}"]
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# gunicorn's gevent worker, extended: /stream takes its connection over, streams do not count
# toward max_requests, and a stopping worker stops accepting before it drains (app/server.py).
worker_class = "app.server.StreamWorker"
# Concurrent requests per worker. Open streams are not among them: once its replay is written
# a stream is a socket the worker writes to, with no greenlet (app/notifications/live.py).
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
    """Refuse to believe forwarded headers on an exposed address without an allow-list; raise the
    open-files limit (every stream is a descriptor); give the workers a metrics folder."""
    from app.config import refuse_exposed_proxy_trust

    refusal = refuse_exposed_proxy_trust(list(server.cfg.bind), dict(os.environ))
    if refusal:
        server.log.critical("not starting: %s", refusal)
        sys.exit(1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        server.log.info("raised open files limit from %s to %s", soft, hard)
    # prometheus_client's multiprocess mode: each worker writes its values in this folder and
    # /metrics adds them up. It must be empty at start and set before any worker imports the app.
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        os.makedirs(folder, exist_ok=True)
        for name in os.listdir(folder):
            if name.endswith(".db"):
                os.unlink(os.path.join(folder, name))
    else:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="tidings-metrics-")


def on_exit(server):
    """Remove the folder where this master's workers passed streams to each other (app/succession.py)."""
    import shutil

    from app.succession import folder_of

    shutil.rmtree(folder_of(server.pid), ignore_errors=True)


def child_exit(server, worker):
    """Forget a dead worker's live gauges (open streams, channels)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """Refuse workers other than Tidings' own (a sync or threaded one would pin a worker per tab)."""
    import gevent

    from app.server import WORKER_BOOT_ERROR, StreamWorker

    if not isinstance(worker, StreamWorker):
        worker.log.critical(
            "Tidings needs its gevent worker class (worker_class = %r, set in gunicorn.conf.py): "
            "a sync or threaded worker would hold one worker per open stream. "
            "Start with: gunicorn -c gunicorn.conf.py wsgi:app",
            worker_class,
        )
        sys.exit(WORKER_BOOT_ERROR)  # the arbiter stops instead of respawning

    tune_garbage_collector()

    metrics_dir = os.environ.get("TIDINGS_METRICS_DIR")
    if metrics_dir:
        from app.metrics import counters

        def dump_metrics():
            while True:
                counters.write(metrics_dir, worker.served_app)
                gevent.sleep(1.0)

        gevent.spawn(dump_metrics)


def tune_garbage_collector():
    """Keep the cycle collector from costing a seventh of a busy worker's CPU.

    Every Flask request leaves a reference cycle (werkzeug's URL matcher defines a recursive
    closure per match), so the collector runs often, and each full pass walked the whole app
    loaded at boot plus every open stream. What the worker loaded at boot is frozen out of
    the collector's reach (``gc.freeze``), and the youngest generation is collected every
    20,000 new objects rather than 700: the cycles are still freed, in fewer, larger passes,
    at the price of ≈ 2.5 MB of young garbage kept between them. Measured with one worker on
    a core of its own opening 3 × 10,000 streams (docs/benchmarks/README.md, "connect CPU,
    isolated"): the collector's share of its CPU 14 % → 1.6 %, connect CPU 0.58 → 0.48 ms.
    """
    import gc

    gc.freeze()
    gc.set_threshold(20_000, 20, 10)
