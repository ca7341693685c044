"""``/healthz`` (the process runs), ``/readyz`` (it can serve), ``/metrics`` (Prometheus text)."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os

import redis
import sqlalchemy as sa
from flask import Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from prometheus_client import REGISTRY as PROCESS_REGISTRY
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from app.extensions import db
from app.notifications import tidings
from app.ops import bp
from app.push import sending
from app.responses import json_error

log = logging.getLogger(__name__)

# How long /readyz waits for a hub that has just been started to connect.
HUB_CONNECT_WAIT = 1.0


@bp.route("/healthz")
def healthz():
    """200 while the process runs and serves requests."""
    return jsonify(status="ok")


@bp.route("/readyz")
def readyz():
    """200 when the database and Redis answer and this worker's hub is connected; else 503. What
    is wrong goes to the log, and to those who may read /metrics; others learn only "not ready"
    (the reasons name hosts, ports and the database)."""
    problems = []
    try:
        db.session.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError as exc:  # any driver error means "not ready", said with its cause
        problems.append(f"database: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}")
        db.session.rollback()
    trouble = tidings.check_ready(wait=HUB_CONNECT_WAIT)
    if trouble:
        problems.append(trouble)
    if problems:
        log.warning("not ready: %s", "; ".join(problems))
        response, status = json_error(503, "; ".join(problems) if _may_read_metrics() else "not ready")
        response.status_code = status
        return response
    return jsonify(status="ready")


@bp.route("/metrics")
def metrics():
    """Prometheus text for this host (every worker): with the configured token; outside production
    also to a client on this host."""
    if not _may_read_metrics():
        return json_error(
            403, "metrics need METRICS_TOKEN as a bearer token (or, outside production, localhost)"
        )
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = PROCESS_REGISTRY
    site = CollectorRegistry()  # what every process shares: in Redis, read once per scrape
    site.register(SiteCollector())
    return Response(generate_latest(registry) + generate_latest(site), content_type=CONTENT_TYPE_LATEST)


class SiteCollector:
    """Gauges of the users connected and looking (across every worker and host, from presence)
    and the outcomes of pushes (counted by the background workers); nothing when Redis is away."""

    def collect(self):
        try:
            connected, looking = tidings.presence_counts()
            pushes = sending.stats()
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            log.warning("metrics: presence and push counts unavailable: %s", exc)
            return
        yield GaugeMetricFamily(
            "tidings_users_connected", "Users with a stream open on any worker or host", connected
        )
        yield GaugeMetricFamily("tidings_users_looking", "Users with a visible Tidings tab", looking)
        counter = CounterMetricFamily(
            "tidings_push",
            "Pushes by outcome (sent, gone, retried, failed; not sent: looking, read, superseded)",
            labels=["outcome"],
        )
        for name, value in pushes.items():
            counter.add_metric([name], value)
        yield counter


def _may_read_metrics() -> bool:
    token = current_app.config.get("METRICS_TOKEN")
    offered = request.headers.get("Authorization", "")
    if token and hmac.compare_digest(offered.encode(), f"Bearer {token}".encode()):
        return True
    # In production only the token opens them: "this host" may be a tunnel or a proxy that adds
    # no header, so where a request comes from proves nothing there.
    if current_app.config.get("APP_ENV") == "production":
        return False
    # Straight from this host, not relayed by a proxy (which would add X-Forwarded-For).
    if "X-Forwarded-For" in request.headers:
        return False
    try:
        return ipaddress.ip_address(request.environ.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False
