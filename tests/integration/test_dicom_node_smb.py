"""The DICOM node over the SMB source: a real smbd as the NAS, stopped in the middle of a C-MOVE."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import time

import pydicom
import pytest
from tests.support.dcmtk import StoreSCP, body, run
from tests.support.dicom import write_series
from tests.support.orthanc import OrthancServer, free_port
from tests.support.qr_corpus import write_qr_corpus
from tests.support.smbd import SambaServer, make_share_dir

pytestmark = pytest.mark.integration
BIG = 400  # files of the series that is moved while the NAS goes away


@pytest.fixture(scope="module")
def nas():
    root = make_share_dir("nas-qr-share-")
    rows = write_qr_corpus(root)
    big = write_series(os.path.join(root, "BIG"), BIG, PatientID="BIG", PatientName="BIG^SERIES",
                       pixel_bytes=200_000)
    for folder, _dirs, files in os.walk(root):  # smbd reads as nasuser
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    server = SambaServer(root).start()
    yield {"smbd": server, "root": root, "rows": rows, "big": big}
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def node(nas, tmp_path_factory):
    smbd = nas["smbd"]
    work = tmp_path_factory.mktemp("qr-smb-orthanc")
    ws_port, node_port = free_port(), free_port()
    server = OrthancServer(work, nas={
        "Connection": {"Type": "smb", "Host": smbd.host, "Port": smbd.port, "Share": smbd.share,
                       "Username": smbd.user, "Password": smbd.password},
        "DataDirectory": str(work / "nasdata"), "ShareServer": {"Port": free_port()},
        "DicomServer": {"Enabled": True, "AET": "NAS", "Port": node_port},
    }, extra={"DicomServerEnabled": True, "DicomAet": "ORTHANC",
              "DicomModalities": {"ws": ["WS1", "127.0.0.1", ws_port]}})
    server.start()
    try:
        assert server.index()["phase"] == "done"
        yield {"orthanc": server, "port": node_port, "ws_port": ws_port, "work": work}
    finally:
        server.stop()


@pytest.fixture
def smbd_running(nas):
    """The module's smbd, answering before the test and running again after it."""
    nas["smbd"].ensure_answering()
    yield nas["smbd"]
    if nas["smbd"].proc is None:
        nas["smbd"].start()


def last_audit(node) -> dict:
    conn = sqlite3.connect(node["work"] / "nasdata" / "dicom.db")
    conn.row_factory = sqlite3.Row
    try:
        return dict(conn.execute("SELECT * FROM retrievals ORDER BY id DESC LIMIT 1").fetchone())
    finally:
        conn.close()


def test_move_and_orthanc_retrieve_over_smb(nas, node, smbd_running, tmp_path):
    study = next(r["StudyInstanceUID"] for r in nas["rows"] if r["series"] == "S4.1")
    files = {r["SOPInstanceUID"]: r["path"] for r in nas["rows"] if r["StudyInstanceUID"] == study}
    with StoreSCP(tmp_path / "ws", port=node["ws_port"]) as scp:
        result = run("movescu", "-S", "-aet", "WS1", "-aec", "NAS", "-aem", "WS1", "127.0.0.1", node["port"],
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}")
        assert result.returncode == 0, result.stderr
        got = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in scp.files()}
    assert set(got) == set(files) and all(body(got[s]) == body(files[s]) for s in got)

    orthanc = node["orthanc"]
    query = orthanc.post("/modalities/nas/query", json={"Level": "Study", "Query": {"StudyInstanceUID": study}})
    assert query.status_code == 200, query.text
    assert orthanc.post(f"/queries/{query.json()['ID']}/retrieve", data="ORTHANC", timeout=120).status_code == 200
    found = orthanc.post("/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study},
                                              "Expand": True}).json()
    assert {i["MainDicomTags"]["SOPInstanceUID"] for i in found} == set(files)


def test_a_nas_that_stops_mid_move_ends_the_move_with_failures(nas, node, smbd_running, tmp_path):
    series = pydicom.dcmread(nas["big"][0], stop_before_pixels=True).SeriesInstanceUID
    with StoreSCP(tmp_path / "ws", port=node["ws_port"]) as scp:
        move = subprocess.Popen(
            ["movescu", "-S", "-aet", "WS1", "-aec", "NAS", "-aem", "WS1", "127.0.0.1", str(node["port"]),
             "-k", "QueryRetrieveLevel=SERIES", "-k", f"SeriesInstanceUID={series}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            while len(scp.files()) < 20 and move.poll() is None:
                time.sleep(0.05)
            smbd_running.kill()  # the NAS goes away, sockets and all
            output, _ = move.communicate(timeout=300)  # ends by itself: never a hang
        finally:
            if move.poll() is None:
                move.kill()
        received = len(scp.files())
    assert 20 <= received < BIG, output
    audit = last_audit(node)
    assert audit["operation"] == "C-MOVE" and audit["files"] == BIG
    assert audit["sent"] == received and audit["failed"] == BIG - received
    assert audit["outcome"] == "failed" and "NAS stopped answering" in audit["detail"]
    assert "Failed" in output or move.returncode != 0
    assert node["orthanc"].get("/system").status_code == 200  # Orthanc fine
    assert node["orthanc"].get("/nas/status").status_code == 200
