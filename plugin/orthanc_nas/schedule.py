"""`Schedule`: incremental runs started by the plugin at the times of a cron expression (local time).

The expression is read by croniter (five fields, as in crontab(5)). A run already going when the
time comes makes that turn skip; the next time is in the status as `next_run_at`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from croniter import croniter

from .background import BackgroundThread
from .errors import Busy, ConfigError, NasError

log = logging.getLogger("orthanc_nas")


def parse_schedule(raw, where: str = "Nas.Schedule") -> str | None:
    """`null` or a five-field cron expression ("0 2 * * *"); ConfigError naming the key otherwise."""
    if raw is None:
        return None
    if not isinstance(raw, str) or len(raw.split()) != 5 or not croniter.is_valid(raw):
        raise ConfigError(f"setting {where} must be null or a cron expression of five fields, not {raw!r}",
                          'For example "0 2 * * *" (every night at 2) or "*/30 7-19 * * 1-5".', field=where)
    return raw


def next_time(expression: str, after: float) -> float:
    """The first time (epoch seconds) after `after` that `expression` names, in local time."""
    start = datetime.fromtimestamp(after).astimezone()
    return croniter(expression, start).get_next(float)


class Scheduler(BackgroundThread):
    """A thread that calls `start()` at each time of the expression; `Busy` from it skips that turn.

    `on_next(t)` is told each next time (epoch seconds), or None once stopped.
    """

    name, join_timeout = "nas-schedule", 5.0

    def __init__(self, expression: str, start: Callable[[], None], on_next: Callable[[float | None], None]):
        super().__init__()
        self.expression = expression
        self._start = start
        self._on_next = on_next

    def stop(self) -> None:
        super().stop()
        self._on_next(None)

    def _loop(self) -> None:
        at = next_time(self.expression, time.time())
        while not self._stop.is_set():
            self._on_next(at)
            if self._stop.wait(max(0.0, at - time.time())):
                return
            try:
                self._start()
                log.info("scheduled indexing started (%s)", self.expression)
            except Busy:
                log.info("scheduled indexing skipped: a run is already going on")
            except NasError as exc:
                log.warning("scheduled indexing could not start: %s", exc.message)
            except Exception:  # a bug: keep the schedule (and Orthanc) running
                log.exception("scheduled indexing could not start")
            at = next_time(self.expression, max(time.time(), at))
