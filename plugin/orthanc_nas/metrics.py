"""The plugin's figures for Orthanc's Prometheus endpoint (`/tools/metrics-prometheus`).

`figures(app)` gives name → value; `MetricsPusher` hands them to Orthanc (the glue's
`SetMetricsValue`) every few seconds, so they follow a run while it goes on and stay after it.
Names start with `orthanc_nas_`; times are epoch seconds, durations seconds.

Retrievals: the jobs of `POST /nas/retrieve` kept in `jobs.db`, by state
(`orthanc_nas_retrieval_jobs_{pending,running,done,failed,cancelled}`), with their files done (stored,
sent or already in Orthanc), files failed and bytes; and the DICOM node's C-MOVE and C-GET from its
audit (`orthanc_nas_dicom_retrievals`, `orthanc_nas_dicom_files_sent`, `orthanc_nas_dicom_files_failed`),
when the node runs. All are totals since the DataDirectory (or the shared database) was made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .background import BackgroundThread
from .jobs import CANCELLED, DONE, FAILED, PENDING, RUNNING

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
        "orthanc_nas_share_downloads": float(app.shares.completed_downloads()),
    }
    if started and finished and finished >= started and not s["running"]:
        values["orthanc_nas_last_run_seconds"] = finished - started
        values["orthanc_nas_last_run_finished"] = finished
    values.update(job_figures(app.jobs))
    if app.dicom_node is not None:
        values.update(node_figures(app.dicom_node.audit))
    return values


def job_figures(jobs) -> dict[str, float]:
    """The jobs of retrieval of a `JobStore`: how many in each state, and their files and bytes."""
    values = {f"orthanc_nas_retrieval_jobs_{state}": 0.0 for state in (PENDING, RUNNING, DONE, FAILED, CANCELLED)}
    totals = [0, 0, 0]
    for state, count, done, failed, size in jobs.totals():
        values[f"orthanc_nas_retrieval_jobs_{state}"] = float(count)
        totals = [totals[0] + done, totals[1] + failed, totals[2] + size]
    values["orthanc_nas_retrieval_files_done"] = float(totals[0])
    values["orthanc_nas_retrieval_files_failed"] = float(totals[1])
    values["orthanc_nas_retrieval_bytes"] = float(totals[2])
    return values


def node_figures(audit) -> dict[str, float]:
    """The C-MOVE and C-GET of the DICOM node (a `RetrievalAudit`): how many, files sent and failed."""
    count, sent, failed = audit.totals()
    return {"orthanc_nas_dicom_retrievals": float(count), "orthanc_nas_dicom_files_sent": float(sent),
            "orthanc_nas_dicom_files_failed": float(failed)}


class MetricsPusher(BackgroundThread):
    """Hands `figures(app)` to `push(name, value)` every `every` seconds until stopped.

    Orthanc's Python plugins (4.0, 5.0) have `SetMetricsValue` but no refresh callback, so the
    figures are pushed: while a run goes on and after it, at most `every` seconds old.
    """

    name = "nas-metrics"

    def __init__(self, app, push: Callable[[str, float], None], every: float = PUSH_EVERY):
        super().__init__()
        self.app, self.push, self.every = app, push, every

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
