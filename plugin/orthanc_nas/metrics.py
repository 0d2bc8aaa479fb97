"""The plugin's figures for Orthanc's Prometheus endpoint (`/tools/metrics-prometheus`).

`figures(app)` gives name → value; the glue hands them to Orthanc (`SetMetricsValue`) each time
Orthanc refreshes its metrics, so they follow a run while it goes on and stay after it.
Names start with `orthanc_nas_`; times are epoch seconds, durations seconds.
"""

from __future__ import annotations

from .shares import COMPLETE
from .status import _parse_iso


def figures(app) -> dict[str, float]:
    s = app.status.snapshot()
    started, finished = _parse_iso(s["started_at"]), _parse_iso(s["finished_at"])
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
    if started and finished and not s["running"]:
        values["orthanc_nas_last_run_seconds"] = finished - started
        values["orthanc_nas_last_run_finished"] = finished
    return values
