"""Jobs of retrieval over the SMB source: a real smbd as the NAS, imported from, then killed mid-job."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
from tests.support.dicom import write_series
from tests.support.orthanc import OrthancServer, free_port
from tests.support.smbd import SambaServer, make_share_dir

pytestmark = pytest.mark.integration
BIG = 300  # files of the series retrieved while the NAS goes away


@pytest.fixture(scope="module")
def nas():
    root = make_share_dir("nas-retrieve-share-")
    small = write_series(os.path.join(root, "SMALL"), 6, PatientID="S1", PatientName="SMB^SMALL", pixel_bytes=8192)
    write_series(os.path.join(root, "BIG"), BIG, PatientID="B1", PatientName="SMB^BIG", pixel_bytes=100_000)
    for folder, _dirs, files in os.walk(root):  # smbd reads as nasuser
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    server = SambaServer(root).start()
    yield {"smbd": server, "root": root, "small": small}
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def orthanc(nas, tmp_path):
    smbd = nas["smbd"]
    smbd.ensure_answering() if smbd.proc is not None else smbd.start()
    server = OrthancServer(tmp_path / "orthanc", nas={
        "Connection": {"Type": "smb", "Host": smbd.host, "Port": smbd.port, "Share": smbd.share,
                       "Username": smbd.user, "Password": smbd.password},
        "DataDirectory": str(tmp_path / "nasdata"), "ShareServer": {"Port": free_port()}})
    server.start()
    try:
        assert server.index()["phase"] == "done"
        yield server
    finally:
        server.stop()


def series_key(server, patient_id: str) -> str:
    [found] = server.get(f"/nas/patients/{patient_id}/series").json()
    return found["series_key"]


def test_import_over_smb_is_byte_identical(nas, orthanc):
    answer = orthanc.post("/nas/retrieve", json={"series": [series_key(orthanc, "S1")], "to": "orthanc"})
    assert answer.status_code == 202
    deadline = time.monotonic() + 120
    while (job := orthanc.get(f"/nas/jobs/{answer.json()['job']}").json())["state"] in ("pending", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    assert (job["state"], job["files_done"], job["files_failed"]) == ("done", 6, 0), job
    served = {orthanc.get(f"/instances/{i}/file").content for i in orthanc.get("/instances").json()}
    assert served == {open(p, "rb").read() for p in nas["small"]}


def test_a_nas_that_stops_mid_job_ends_it_with_failures(nas, orthanc):
    job_id = orthanc.post("/nas/retrieve", json={"series": [series_key(orthanc, "B1")]}).json()["job"]
    deadline = time.monotonic() + 120
    while orthanc.get(f"/nas/jobs/{job_id}").json()["files_done"] < 20:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    nas["smbd"].kill()  # the NAS goes away, sockets and all
    deadline = time.monotonic() + 300  # ends by itself: never a hang
    while (job := orthanc.get(f"/nas/jobs/{job_id}").json())["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["state"] == "failed" and job["failure"]["kind"] == "network", job
    assert 20 <= job["files_done"] < BIG and job["files_done"] + job["files_failed"] == BIG
    assert job["error_samples"]
    assert len(orthanc.get("/instances").json()) == job["files_done"]
    assert orthanc.get("/nas/status").status_code == 200  # Orthanc fine


def wait_for(server, job_id: str, condition, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while not condition(job := server.get(f"/nas/jobs/{job_id}").json()):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def ended(job: dict) -> bool:
    return job["state"] not in ("pending", "running")


def test_a_job_cancelled_while_the_nas_is_stalled_stops_at_the_next_file(nas, orthanc):
    smbd = nas["smbd"]
    job_id = orthanc.post("/nas/retrieve", json={"series": [series_key(orthanc, "B1")]}).json()["job"]
    wait_for(orthanc, job_id, lambda j: j["files_done"] >= 20)
    smbd.pause()  # the NAS stops answering: the job waits on its reads
    try:
        assert orthanc.delete(f"/nas/jobs/{job_id}").status_code == 200
    finally:
        smbd.resume()
    job = wait_for(orthanc, job_id, ended)
    assert job["state"] == "cancelled" and 20 <= job["files_done"] < BIG, job
    assert len(orthanc.get("/instances").json()) == job["files_done"] - job["files_skipped"]


def test_jobs_wait_their_turn_and_a_kill_of_orthanc_marks_them_failed(nas, orthanc):
    smbd = nas["smbd"]
    key = series_key(orthanc, "B1")
    smbd.pause()  # the jobs stay where they are while the test looks
    try:
        ids = [orthanc.post("/nas/retrieve", json={"series": [key]}).json()["job"] for _ in range(3)]
        for job_id in ids[:2]:
            wait_for(orthanc, job_id, lambda j: j["state"] == "running")
        assert orthanc.get(f"/nas/jobs/{ids[2]}").json()["state"] == "pending"  # two run at once at most
        orthanc.kill9()  # Orthanc stops abruptly mid-job
    finally:
        smbd.resume()
    orthanc.start()
    for job_id in ids:
        job = orthanc.get(f"/nas/jobs/{job_id}").json()
        assert job["state"] == "failed" and "Orthanc stopped" in job["failure"]["error"], job
        assert job["finished_at"]
    again = wait_for(orthanc, orthanc.post("/nas/retrieve", json={"series": [key]}).json()["job"], ended, 300)
    assert (again["state"], again["files_done"], again["files_failed"]) == ("done", BIG, 0), again


def test_a_clean_stop_of_orthanc_mid_job_marks_it_failed(nas, orthanc):
    smbd = nas["smbd"]
    job_id = orthanc.post("/nas/retrieve", json={"series": [series_key(orthanc, "B1")]}).json()["job"]
    wait_for(orthanc, job_id, lambda j: j["files_done"] >= 20)
    smbd.pause()
    try:
        orthanc.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while "share listener stopped" not in orthanc.log():  # the plugin is stopping (NasApp.close)
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        smbd.resume()  # the reads in progress end, and Orthanc with them
    orthanc.proc.wait(60)
    orthanc.start()
    job = orthanc.get(f"/nas/jobs/{job_id}").json()
    assert job["state"] == "failed" and "Orthanc stopped" in job["failure"]["error"], job
    assert 20 <= job["files_done"] < BIG
