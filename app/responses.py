"""JSON or HTML for script clients, and where a redirect may go: shared by the blueprints and the limits."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Response, current_app, jsonify, request


def _script_paths() -> tuple[str, ...]:
    """The paths of the Flask-Tidings blueprint's routes: their clients are scripts (EventSource,
    fetch), which always get JSON, never an HTML page or a redirect."""
    return tuple(
        rule.rule
        for rule in current_app.url_map.iter_rules()
        if rule.endpoint.startswith("tidings.") and rule.endpoint != "tidings.static"
    )


def wants_json() -> bool:
    """Whether this request should be answered with JSON."""
    if request.blueprint in ("tidings", "api") or request.path.startswith(("/api/", *_script_paths())):
        return True
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return (
        best == "application/json" and request.accept_mimetypes[best] > request.accept_mimetypes["text/html"]
    )


def json_error(status: int, message: str) -> tuple[Response, int]:
    """A ``{"error": message}`` response."""
    return jsonify(error=message), status


def safe_next(target: str | None) -> str | None:
    """``target`` if it is a path on this site, else None (no open redirects)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    if not target.isprintable():  # CR/LF would split the Location header
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return None
    return target
