"""Indexing through a real Orthanc: POST /nas/index, GET /nas/status, DELETE /nas/index."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time

import pytest
from tests.support.dicom import write_series
from tests.support.orthanc import OrthancServer

pytestmark = pytest.mark.integration


def local(path) -> dict:
    return {"Connection": {"Type": "local", "Path": str(path)}}


def test_status_before_any_indexing(orthanc_factory, small_nas):
    o = orthanc_factory(local(small_nas))
    s = o.get("/nas/status").json()
    assert s["running"] is False and s["phase"] == "idle" and s["files_processed"] == 0


def test_index_a_folder_and_read_the_status(orthanc_factory, small_nas):
    o = orthanc_factory(local(small_nas))
    s = o.index()
    assert s["phase"] == "done"
    assert s["enumerated_files"] == 17 and s["files_processed"] == 17
    assert s["series_count"] == 4 and s["errors"] == 3
    assert {e["path"] for e in s["error_samples"]} == {"readme.txt", "empty.dcm", "login.dcm"}
    saved = json.loads((o.workdir / "storage" / "nas" / "index_status.json").read_text())
    assert saved["phase"] == "done" and saved["series_count"] == 4
    again = o.index()
    assert again["files_skipped"] == 17 and again["errors"] == 0


def test_bad_requests_get_the_error_object(orthanc_factory, small_nas):
    o = orthanc_factory(local(small_nas))
    r = o.post("/nas/index", data="full=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and r.json()["kind"] == "bad_request" and r.json()["hint"]
    r = o.post("/nas/index", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    r = o.post("/nas/index", json={"full": "yes"})
    assert r.status_code == 400 and "full" in r.json()["error"]
    r = o.get("/nas/nothing-here")
    assert r.status_code == 404 and set(r.json()) == {"error", "kind", "hint"}


@pytest.fixture(scope="module")
def big_nas(tmp_path_factory):
    """Enough files that indexing takes a few seconds inside Orthanc."""
    root = tmp_path_factory.mktemp("big-nas")
    for s in range(40):
        write_series(root / f"patient{s % 7}" / f"series {s}", 100, PatientID=f"P{s % 7}", pixel_bytes=16)
    return root


def test_busy_and_stop_while_indexing(orthanc_factory, big_nas):
    o = orthanc_factory(local(big_nas))
    assert o.post("/nas/index", json={}).status_code == 202
    r = o.post("/nas/index", json={})
    assert r.status_code == 409 and r.json()["kind"] == "busy"
    started = time.monotonic()
    s = o.get("/nas/status")
    assert s.status_code == 200 and time.monotonic() - started < 0.5
    assert o.delete("/nas/index").status_code == 200
    s = o.wait_index(60, phases=("cancelled", "done"))
    assert s["phase"] == "cancelled" and s["files_processed"] < 4000


def test_kill9_restart_and_resume(orthanc_factory, big_nas, tmp_path):
    workdir = tmp_path / "resume"
    o = orthanc_factory(local(big_nas), workdir=workdir)
    assert o.post("/nas/index", json={}).status_code == 202
    deadline = time.monotonic() + 120
    while o.get("/nas/status").json()["files_processed"] < 600:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    o.kill9()
    db = workdir / "storage" / "nas" / "index.db"
    committed = sqlite3.connect(db).execute("SELECT count(*) FROM files").fetchone()[0]
    assert 0 < committed < 4000

    o2 = orthanc_factory(local(big_nas), workdir=workdir)
    s = o2.get("/nas/status").json()
    assert s["phase"] == "interrupted" and s["running"] is False
    s = o2.index()
    assert s["phase"] == "done" and s["files_skipped"] == committed
    assert s["files_processed"] == 4000 and s["series_count"] == 40 and s["errors"] == 0


def test_unmounted_root_leaves_the_index_intact(orthanc_factory, small_nas, tmp_path):
    nas = tmp_path / "mnt"
    shutil.copytree(small_nas, nas)
    o = orthanc_factory(local(nas))
    assert o.index()["series_count"] == 4
    shutil.rmtree(nas)  # the share is gone: mount point missing
    s = o.index()
    assert s["phase"] == "failed" and s["failure"]["kind"] == "not_found"
    nas.mkdir()  # an empty mount point
    s = o.index()
    assert s["phase"] == "done" and any("unmounted" in w for w in s["warnings"])
    db = o.workdir / "storage" / "nas" / "index.db"
    assert sqlite3.connect(db).execute("SELECT count(*) FROM series").fetchone()[0] == 4


@pytest.mark.parametrize("section, named", [
    ({"Workerz": 4}, "Nas.Workerz"),
    ({"Connection": {"Type": "local", "Path": 3}}, "Nas.Connection.Path"),
])
def test_a_bad_setting_stops_orthanc_naming_the_key(tmp_path, section, named):
    o = OrthancServer(tmp_path / "bad", section)
    o.start(expect_failure=True)
    assert o.proc.returncode != 0
    assert named in o.log()


def test_orthanc_stops_cleanly_after_indexing(orthanc_factory, small_nas):
    """Stopping Orthanc after the plugin served requests ends with exit code 0 (no crash while finalizing)."""
    o = orthanc_factory(local(small_nas))
    assert o.index()["phase"] == "done"
    o.stop()
    assert o.proc.returncode == 0, o.log()[-2000:]
