"""From a NAS series to a viewer or a workstation, through a real Orthanc: POST /nas/retrieve, /nas/jobs,
/nas/destinations, /nas/patients/{PatientID}/series; dcmtk's storescp as the workstation."""

from __future__ import annotations

import sqlite3
import time

import pytest
from tests.support.dcmtk import StoreSCP, body
from tests.support.dicom import write_series
from tests.support.orthanc import PYTHON_PLUGIN, TARGET, OrthancServer, free_port

pytestmark = pytest.mark.integration

WEB_VIEWER = "/usr/share/orthanc/plugins/libOrthancWebViewer.so"


def nas_folder(root):
    """Two series of patient P1 (2023 and 2024) and one of P2."""
    write_series(root / "P1" / "2024", 5, PatientID="P1", PatientName="DOE^JOHN", StudyDate="20240301",
                 SeriesNumber=1, pixel_bytes=4096)
    write_series(root / "P1" / "2023", 3, PatientID="P1", PatientName="DOE^JOHN", StudyDate="20230301",
                 SeriesNumber=1)
    write_series(root / "P2", 2, PatientID="P2", PatientName="ROE^JANE", StudyDate="20240101", Modality="MR")
    return root


@pytest.fixture
def start(tmp_path, orthanc_factory):
    """Start an Orthanc on a NAS folder (through `orthanc_factory`: its log ends a failure's report)."""
    def start(nas_root, *, extra=None, nas=None, name="orthanc") -> OrthancServer:
        return orthanc_factory({"Connection": {"Type": "local", "Path": str(nas_root)},
                                "DataDirectory": str(tmp_path / "nasdata"), "ShareServer": {"Port": 0},
                                **(nas or {})}, workdir=tmp_path / name, extra=extra)
    return start


def key_of(server, folder: str, root) -> str:
    for s in server.get("/nas/search").json():
        detail = server.get(f"/nas/series/{s['series_key']}").json()
        if detail["files"][0]["path"].startswith(folder + "/"):
            return s["series_key"]
    raise AssertionError(f"no series under {folder}")


def wait_job(server, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    job = {}
    while time.monotonic() < deadline:
        job = server.get(f"/nas/jobs/{job_id}").json()
        if job["state"] not in ("pending", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"the job did not end within {timeout}s: {job}")


def retrieve(server, keys, to="orthanc") -> dict:
    answer = server.post("/nas/retrieve", json={"series": keys, "to": to})
    assert answer.status_code == 202, answer.text
    return wait_job(server, answer.json()["job"])


@pytest.fixture
def nas(tmp_path):
    return nas_folder(tmp_path / "nas")


def test_open_imports_byte_identical_instances_then_skips_them(nas, start):
    server = start(nas)
    try:
        assert server.index()["phase"] == "done"
        key = key_of(server, "P1/2024", nas)
        job = retrieve(server, [key])
        assert job["state"] == "done", job
        assert (job["files_total"], job["files_done"], job["files_skipped"], job["files_failed"]) == (5, 5, 0, 0)
        assert job["bytes"] == sum(p.stat().st_size for p in (nas / "P1" / "2024").iterdir())
        [series_id] = job["orthanc"]["series"]
        instances = server.get(f"/series/{series_id}/instances").json()
        assert len(instances) == 5
        on_nas = {p.read_bytes() for p in (nas / "P1" / "2024").iterdir()}
        served = {server.get(f"/instances/{i['ID']}/file").content for i in instances}
        assert served == on_nas  # Orthanc stored the NAS files as they are
        names = [v["name"] for v in job["viewers"]]
        assert names == ["Orthanc Explorer"]  # no viewer plugin loaded: none guessed
        assert job["viewers"][0]["url"] == f"/app/explorer.html#series?uuid={series_id}"
        assert server.get(job["viewers"][0]["url"].split("#")[0]).status_code == 200
        # again: everything is already there, nothing is read or sent
        again = retrieve(server, [key])
        assert (again["state"], again["files_done"], again["files_skipped"], again["bytes"]) == ("done", 5, 5, 0)
        assert again["orthanc"]["series"] == [series_id]
        jobs = server.get("/nas/jobs").json()
        assert [j["id"] for j in jobs[:2]] == [again["id"], job["id"]]  # newest first
    finally:
        server.stop()


def test_bad_requests_name_what_is_wrong(nas, start):
    server = start(nas)
    try:
        server.index()
        key = key_of(server, "P2", nas)
        answer = server.post("/nas/retrieve", json={"series": ["nope"], "to": "orthanc"})
        assert answer.status_code == 404 and "nope" in answer.json()["error"]
        answer = server.post("/nas/retrieve", json={"series": [key], "to": "pacs"})
        assert answer.status_code == 404 and "pacs" in answer.json()["error"]
        answer = server.post("/nas/retrieve", json={"series": key})
        assert answer.status_code == 400 and answer.json()["field"] == "series"
        answer = server.post("/nas/retrieve", data=b"series=x", headers={"Content-Type": "text/plain"})
        assert answer.status_code == 415
        assert server.get("/nas/jobs/unknown").status_code == 404
        assert server.delete("/nas/jobs/unknown").status_code == 404
    finally:
        server.stop()


def test_viewer_links_follow_the_loaded_plugins(nas, start):
    server = start(nas, extra={"Plugins": [PYTHON_PLUGIN, WEB_VIEWER]} if TARGET == "1.10" else None)
    if TARGET != "1.10":
        server.stop()
        pytest.skip("Debian 12's orthanc-webviewer loads into Orthanc 1.10 only")
    try:
        server.index()
        job = retrieve(server, [key_of(server, "P2", nas)])
        [series_id] = job["orthanc"]["series"]
        viewers = {v["name"]: v["url"] for v in job["viewers"]}
        assert set(viewers) == {"Orthanc Explorer", "Orthanc Web Viewer"}
        assert viewers["Orthanc Web Viewer"] == f"/web-viewer/app/viewer.html?series={series_id}"
        assert server.get(viewers["Orthanc Web Viewer"]).status_code == 200
    finally:
        server.stop()


def test_priors_of_a_patient_newest_first(nas, start):
    server = start(nas)
    try:
        server.index()
        found = server.get("/nas/patients/P1/series").json()
        assert [s["StudyDate"] for s in found] == ["20240301", "20230301"]
        assert {s["PatientID"] for s in found} == {"P1"}
        assert set(found[0]) >= {"series_key", "PatientName", "SeriesInstanceUID", "file_count"}
        assert server.get("/nas/patients/P9/series").json() == []
    finally:
        server.stop()


def test_send_to_a_workstation_and_echo(tmp_path, nas, start):
    scp_dir = tmp_path / "received"
    with StoreSCP(scp_dir, aet="WS1") as scp:
        dead = free_port()
        server = start(nas, extra={"DicomModalities": {"ws": ["WS1", "127.0.0.1", scp.port],
                                                                 "dead": ["DEAD", "127.0.0.1", dead]}})
        try:
            server.index()
            destinations = server.get("/nas/destinations").json()
            assert destinations[0] == {"id": "orthanc"}
            assert {"id": "ws", "AET": "WS1", "Host": "127.0.0.1", "Port": scp.port} in destinations
            echo = server.post("/nas/destinations/ws/echo", json={})
            assert echo.status_code == 200 and echo.json()["ok"] is True
            dead_echo = server.post("/nas/destinations/dead/echo", json={})
            assert dead_echo.status_code == 502 and dead_echo.json()["kind"] == "network"
            assert server.post("/nas/destinations/nope/echo", json={}).status_code == 404
            # a modality added through Orthanc's REST API is a destination at once
            assert server.put("/modalities/late", json={"AET": "LATE", "Host": "127.0.0.1", "Port": 1}).ok
            assert "late" in [d["id"] for d in server.get("/nas/destinations").json()]

            keys = [key_of(server, "P1/2024", nas), key_of(server, "P2", nas)]
            job = retrieve(server, keys, to="ws")
            assert (job["state"], job["files_done"], job["files_failed"]) == ("done", 7, 0), job
            received = {body(p) for p in scp.files()}
            on_nas = {body(p) for folder in ("P1/2024", "P2") for p in (nas / folder).iterdir()}
            assert received == on_nas  # the datasets as stored on the NAS, byte for byte
            assert server.get("/instances").json() == []  # nothing stored in Orthanc
            failed = retrieve(server, [keys[1]], to="dead")
            assert failed["files_failed"] == 2 and "DEAD" in failed["error_samples"][0]["error"]
        finally:
            server.stop()


def imported_rows(tmp_path) -> list[dict]:
    conn = sqlite3.connect(tmp_path / "nasdata" / "jobs.db")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM imported")]
    finally:
        conn.close()


def test_retention_deletes_only_what_the_plugin_imported_unchanged(tmp_path, nas, start):
    there_before = sorted((nas / "P1" / "2024").iterdir())[0]
    # 30 seconds: long enough that no sweep can come before the user's change below, even on a busy
    # machine (with 3 s, the first instances imported could be swept while the job was still ending)
    server = start(nas, nas={"ImportRetentionHours": 30 / 3600},
                   extra={"OverwriteInstances": True})
    try:
        server.index()
        assert server.post("/instances", data=there_before.read_bytes()).ok  # a user had this one already
        job = retrieve(server, [key_of(server, "P1/2024", nas)])
        assert (job["files_done"], job["files_skipped"]) == (5, 1)
        [series_id] = job["orthanc"]["series"]
        if TARGET != "1.10":  # labels came with Orthanc 1.12: the series says where it came from
            assert server.get("/system").json()["HasLabels"] is True
            assert server.get(f"/series/{series_id}/labels").json() == ["nas"]
        else:
            assert "HasLabels" not in server.get("/system").json()
        # a user changes one of the imported instances (stored again with another value)
        import pydicom
        changed_path = sorted((nas / "P1" / "2024").iterdir())[1]
        ds = pydicom.dcmread(changed_path)
        ds.SeriesDescription = "CHANGED BY A USER"
        import io
        buffer = io.BytesIO()
        ds.save_as(buffer)
        assert server.post("/instances", data=buffer.getvalue()).ok
        assert len(imported_rows(tmp_path)) == 4
        deadline = time.monotonic() + 120
        while imported_rows(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert imported_rows(tmp_path) == []
        left = server.get(f"/series/{series_id}/instances?expand").json()
        kept = {i["MainDicomTags"]["SOPInstanceUID"] for i in left}
        assert kept == {pydicom.dcmread(there_before).SOPInstanceUID, ds.SOPInstanceUID}
        assert all(p.exists() for p in (nas / "P1" / "2024").iterdir())  # the NAS is never touched
    finally:
        server.stop()

