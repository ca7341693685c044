"""Per-process counters: SQL statements, HTTP requests, open streams.

The benchmark (and an operator) can ask each gunicorn worker to write its counters to
``$TIDINGS_METRICS_DIR/<pid>.json`` once a second (see gunicorn.conf.py).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from flask import Flask
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine


class Counters:
    """Monotonic counters of one process."""

    def __init__(self) -> None:
        self.sql_statements = 0
        self.http_requests = 0

    def snapshot(self, app: Flask | None = None) -> dict:
        """The counters, plus the hub's stream counts when it runs in this process."""
        data = {
            "pid": os.getpid(),
            "time": time.time(),
            "sql_statements": self.sql_statements,
            "http_requests": self.http_requests,
        }
        if app is not None:
            from app.notifications import tidings

            engine = tidings.stats(app)
            data["sql_statements"] += engine.pop("raw_sql_statements")
            data.update(engine)
        return data

    def write(self, directory: str, app: Flask | None = None) -> None:
        """Write the snapshot atomically to ``directory/<pid>.json``."""
        path = Path(directory) / f"{os.getpid()}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot(app)))
        os.replace(tmp, path)


counters = Counters()


@sa_event.listens_for(Engine, "before_cursor_execute")
def _count_statement(conn, cursor, statement, parameters, context, executemany) -> None:
    counters.sql_statements += 1


def init_app(app: Flask) -> None:
    """Count every request the app serves."""

    @app.before_request
    def _count_request() -> None:
        counters.http_requests += 1
