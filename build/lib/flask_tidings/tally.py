"""Repeated failures logged as one line per interval with a count, not one line each.

During a Redis outage every send fails to publish; a busy site would write thousands of
identical warnings while an operator needs to read the log. The first failure is logged at
once, the ones after it are counted and summed up once per interval ("could not publish 412
notifications in the last 10 s: Connection refused"), and the first success after failures
says so.
"""

from __future__ import annotations

import logging
import time


class FailureTally:
    """Counts failures of one kind and logs them at most once per ``interval`` seconds."""

    def __init__(self, log: logging.Logger, what: str, interval: float = 10.0) -> None:
        self.log, self.what, self.interval = log, what, interval
        self.pending = 0
        self.cause = ""
        self.failing = False
        self._since = 0.0

    def failed(self, cause: object) -> None:
        """One more failure, with its cause."""
        now = time.monotonic()
        self.cause = str(cause) or type(cause).__name__
        if not self.failing:
            self.failing, self._since = True, now
            self.log.warning(
                "could not %s: %s (repeats are summed every %.0f s)", self.what, self.cause, self.interval
            )
            return
        self.pending += 1
        if now - self._since >= self.interval:
            self._flush(now)

    def succeeded(self) -> None:
        """Things work again: sum up what was left and say so."""
        if not self.failing:
            return
        now = time.monotonic()
        if self.pending:
            self._flush(now)
        self.log.info("could %s again", self.what)
        self.failing = False

    def _flush(self, now: float) -> None:
        self.log.warning(
            "could not %s %d more times in the last %.0f s: %s",
            self.what,
            self.pending,
            now - self._since,
            self.cause,
        )
        self.pending, self._since = 0, now
