"""Keeping the index current, through a real Orthanc: the schedule, a run over one folder, the runs
kept, the snapshot folders left out, and the plugin's figures in Orthanc's Prometheus answer.

The reads in flight while smbd is slowed are in test_smb_indexing.py.
"""

from __future__ import annotations

import re
import shutil
import time
from datetime import datetime

import pytest
from tests.support.dcmtk import run
from tests.support.dicom import write_dicom, write_series
from tests.support.orthanc import free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def nas(tmp_path):
    root = tmp_path / "nas"
    write_series(root / "2024" / "11" / "CT", 4, PatientName="DOE^JOHN")
    write_series(root / "2024" / "12" / "MR", 3, PatientName="ROE^JANE")
    shutil.copytree(root / "2024", root / "#snapshot" / "daily" / "2024")  # QNAP's: copies of every file
    return root


def local(root, **more) -> dict:
    return {"Connection": {"Type": "local", "Path": str(root)}, **more}


def paths(o) -> set[str]:
    found = set()
    for row in o.get("/nas/search", params={"limit": 1000}).json():
        found.update(f["path"] for f in o.get(f"/nas/series/{row['series_key']}").json()["files"])
    return found


def test_a_schedule_of_every_minute_starts_a_run_by_itself(orthanc_factory, nas):
    o = orthanc_factory(local(nas, Schedule="* * * * *"))
    status = o.get("/nas/status").json()
    assert status["next_run_at"] and status["phase"] == "idle", status
    deadline = time.monotonic() + 90  # the next minute, and the run
    runs = []
    while time.monotonic() < deadline and not (runs and runs[0]["finished_at"]):
        time.sleep(0.5)
        runs = o.get("/nas/runs").json()
    assert runs and runs[0]["trigger"] == "schedule" and runs[0]["outcome"] == "done", runs
    assert runs[0]["files_read"] == 7 and runs[0]["series_added"] == 2  # the snapshot left out
    after = o.get("/nas/status").json()
    assert after["next_run_at"] > status["next_run_at"] and after["files_processed"] == 7


def test_a_run_over_one_folder_leaves_the_rest_alone(orthanc_factory, nas):
    o = orthanc_factory(local(nas))
    s = o.index()
    assert s["phase"] == "done" and s["enumerated_files"] == 7, s
    shutil.rmtree(nas / "2024" / "12")  # gone, but outside the folder indexed next
    write_dicom(nas / "2024" / "11" / "CT" / "new.dcm", PatientName="DOE^JOHN")
    for bad in ("../etc", "/2024", "2024/../..", 11):
        r = o.post("/nas/index", json={"path": bad})
        assert r.status_code == 400 and r.json()["kind"] == "bad_request" and r.json()["field"] == "path", r.text
    assert o.post("/nas/index", json={"path": "2024/11"}).status_code == 202
    s = o.wait_index(60)
    assert s["phase"] == "done" and s["enumerated_files"] == 5 and s["files_skipped"] == 4, s
    assert any(p.startswith("2024/12/") for p in paths(o)) and "2024/11/CT/new.dcm" in paths(o)
    runs = o.get("/nas/runs").json()
    assert [r["path"] for r in runs] == ["2024/11", ""] and runs[0]["files_read"] == 1
    assert runs[0]["trigger"] == "api" and runs[0]["series_added"] == 1 and runs[0]["files_removed"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", runs[0]["finished_at"])


def prometheus(o, until, timeout: float = 20) -> dict:
    """The plugin's figures in Orthanc's Prometheus answer, once `until(figures)` holds (pushed every 2 s)."""
    deadline = time.monotonic() + timeout
    while True:
        text = o.get("/tools/metrics-prometheus").text
        figures = {k: float(v) for k, v in re.findall(r"^(orthanc_nas_\w+) (\S+)", text, re.M)}
        if until(figures) or time.monotonic() > deadline:
            return figures
        time.sleep(0.2)


def test_the_plugins_figures_are_in_orthancs_prometheus_answer(orthanc_factory, nas, tmp_path):
    node_port = free_port()
    o = orthanc_factory(local(nas, DicomServer={"Enabled": True, "AET": "NAS", "Port": node_port,
                                                "AllowedCallers": "*"}))
    o.index()
    figures = prometheus(o, lambda f: f.get("orthanc_nas_files_indexed") == 7 and "orthanc_nas_last_run_seconds" in f)
    assert figures.get("orthanc_nas_files_indexed") == 7, figures
    assert figures["orthanc_nas_series"] == 2 and figures["orthanc_nas_errors"] == 0
    assert figures["orthanc_nas_last_run_seconds"] > 0 and figures["orthanc_nas_indexing_running"] == 0
    assert abs(figures["orthanc_nas_last_run_finished"] - time.time()) < 600
    assert figures["orthanc_nas_retrieval_jobs_done"] == 0 and figures["orthanc_nas_dicom_retrievals"] == 0
    write_series(nas / "2025" / "01" / "CT", 2, PatientName="NEW^ONE")
    o.index()
    figures = prometheus(o, lambda f: f.get("orthanc_nas_files_indexed") == 9)
    assert figures["orthanc_nas_files_indexed"] == 9 and figures["orthanc_nas_series"] == 3  # refreshed

    # retrievals: a job into Orthanc (4 files), a C-GET from the DICOM node (3 files)
    series = {s["PatientName"]: s for s in o.get("/nas/search").json()}
    job = o.post("/nas/retrieve", json={"series": [series["DOE^JOHN"]["series_key"]], "to": "orthanc"}).json()["job"]
    deadline = time.monotonic() + 60
    while o.get(f"/nas/jobs/{job}").json()["state"] in ("pending", "running") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert o.get(f"/nas/jobs/{job}").json()["state"] == "done"
    got = tmp_path / "get"
    got.mkdir()
    result = run("getscu", "-S", "-aet", "WS1", "-aec", "NAS", "-od", got, "127.0.0.1", node_port,
                 "-k", "QueryRetrieveLevel=SERIES", "-k", f"SeriesInstanceUID={series['ROE^JANE']['SeriesInstanceUID']}")
    assert result.returncode == 0 and len(list(got.iterdir())) == 3, result.stderr
    figures = prometheus(o, lambda f: f.get("orthanc_nas_retrieval_jobs_done") == 1
                         and f.get("orthanc_nas_dicom_retrievals") == 1)
    assert figures["orthanc_nas_retrieval_jobs_done"] == 1 and figures["orthanc_nas_retrieval_jobs_running"] == 0
    assert figures["orthanc_nas_retrieval_jobs_failed"] == 0 and figures["orthanc_nas_retrieval_files_failed"] == 0
    assert figures["orthanc_nas_retrieval_files_done"] == 4
    assert figures["orthanc_nas_retrieval_bytes"] == sum(p.stat().st_size for p in (nas / "2024" / "11" / "CT").iterdir())
    assert (figures["orthanc_nas_dicom_retrievals"], figures["orthanc_nas_dicom_files_sent"],
            figures["orthanc_nas_dicom_files_failed"]) == (1, 3, 0)


def test_a_throttled_run_says_so_while_it_goes_on(orthanc_factory, nas):
    o = orthanc_factory(local(nas, Throttle={"Hours": "00:00-24:00", "MaxFilesPerSecond": 2}))
    assert o.post("/nas/index", json={}).status_code == 202
    seen = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        s = o.get("/nas/status").json()
        seen.append(s["throttled"])
        if not s["running"] and s["phase"] != "enumerating":
            break
        time.sleep(0.1)
    assert s["phase"] == "done" and s["files_processed"] == 7, s
    assert True in seen and s["throttled"] is False  # held while reading, released at the end
    run = o.get("/nas/runs").json()[0]
    assert run["files_read"] == 7
    seconds = (datetime.fromisoformat(run["finished_at"]) - datetime.fromisoformat(run["started_at"])).total_seconds()
    assert seconds >= 2, run  # 7 reads half a second apart take 3 s (times are to the second): never faster
