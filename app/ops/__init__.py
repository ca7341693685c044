"""Operators' endpoints: liveness, readiness and Prometheus metrics."""

from flask import Blueprint

bp = Blueprint("ops", __name__)

from app.ops import routes  # noqa: E402,F401
