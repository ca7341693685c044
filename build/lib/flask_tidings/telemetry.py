"""Prometheus metrics, declared once for every process (web workers, RQ workers, the CLI).

Under gunicorn they are kept in prometheus_client's multiprocess mode: gunicorn.conf.py points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before any worker starts, each process writes
its values there, and ``GET /metrics`` (app/ops) adds them up across workers. Gauges of live
things (streams, channels) count only processes that are alive.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STREAMS_OPEN = Gauge(
    "tidings_streams_open", "Notification streams open in this host's workers", multiprocess_mode="livesum"
)
CHANNELS_SUBSCRIBED = Gauge(
    "tidings_channels_subscribed",
    "Users' channels the hubs are subscribed to (one per user per worker)",
    multiprocess_mode="livesum",
)
HUB_CONNECTED = Gauge(
    "tidings_hub_connected",
    "1 while every live worker's hub holds its Redis pub/sub connection",
    multiprocess_mode="livemin",
)
DELIVERIES = Counter("tidings_deliveries", "Events handed to open streams (one per stream)")
STREAMS_CARRIED = Counter(
    "tidings_streams_carried", "Open streams a stopping worker passed to its successors (never closed)"
)
SLOW_CLIENT_CUTOFFS = Counter(
    "tidings_slow_client_cutoffs", "Streams closed because their client fell too far behind"
)
HUB_RECONNECTS = Counter("tidings_hub_reconnects", "Times a hub lost its Redis connection and reconnected")
PUBLISH_FAILURES = Counter(
    "tidings_publish_failures", "Stored notifications that could not be published (Redis away)"
)
STORE_REREADS = Counter("tidings_store_rereads", "Store re-reads of a user's streams (after reconnects)")
COMMIT_TO_PUBLISH = Histogram(
    "tidings_commit_to_publish_seconds",
    "From a notification's commit to its publish returning",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
