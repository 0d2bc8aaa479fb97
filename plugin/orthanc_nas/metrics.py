"""The plugin's figures for Orthanc's Prometheus endpoint (`/tools/metrics-prometheus`).

`figures(app)` gives name → value; `MetricsPusher` hands them to Orthanc (the glue's
`SetMetricsValue`) every few seconds, so they follow a run while it goes on and stay after it.
Names start with `orthanc_nas_`; times are epoch seconds, durations seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .shares import COMPLETE

log = logging.getLogger("orthanc_nas")

PUSH_EVERY = 2.0  # seconds between two pushes of the figures to Orthanc


def figures(app) -> dict[str, float]:
    s = app.status.snapshot()
    # the status's own times, not the snapshot's whole seconds: a run of less than a second is not 0 s
    started, finished = app.status.started_at, app.status.finished_at
    values = {
        "orthanc_nas_indexing_running": float(s["running"]),
        "orthanc_nas_files_indexed": float(app.catalog.counts()["files"]),
        "orthanc_nas_files_processed": float(s["files_processed"]),
        "orthanc_nas_errors": float(s["errors"]),
        "orthanc_nas_series": float(s["series_count"]),
        "orthanc_nas_files_per_second": float(s["files_per_second"]),
        "orthanc_nas_workers": float(s["workers"]),
        "orthanc_nas_throttled": float(s["throttled"]),
        "orthanc_nas_share_downloads": float(app.shares._conn().execute(
            "SELECT count(*) FROM audit WHERE outcome=?", (COMPLETE,)).fetchone()[0]),
    }
    if started and finished and finished >= started and not s["running"]:
        values["orthanc_nas_last_run_seconds"] = finished - started
        values["orthanc_nas_last_run_finished"] = finished
    return values


class MetricsPusher:
    """Hands `figures(app)` to `push(name, value)` every `every` seconds until stopped.

    Orthanc's Python plugins (4.0, 5.0) have `SetMetricsValue` but no refresh callback, so the
    figures are pushed: while a run goes on and after it, at most `every` seconds old.
    """

    def __init__(self, app, push: Callable[[str, float], None], every: float = PUSH_EVERY):
        self.app, self.push, self.every = app, push, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nas-metrics", daemon=True)

    def start(self) -> MetricsPusher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():  # never started when Orthanc stops before it ran
            self._thread.join(timeout=10)

    def push_once(self) -> None:
        try:
            for name, value in figures(self.app).items():
                self.push(name, value)
        except Exception:  # a figure must never break Orthanc's metrics, nor stop the next push
            log.exception("the NAS metrics could not be refreshed")

    def _loop(self) -> None:
        while True:
            self.push_once()
            if self._stop.wait(self.every):
                return
