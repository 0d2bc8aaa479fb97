"""Odd files from real archives, indexed by the plugin inside a real Orthanc beside ordinary files."""

from __future__ import annotations

import io
import os
import zipfile

import pytest
import requests
from tests.support import odd_files
from tests.support.dicom import write_dicom, write_series
from tests.support.orthanc import OrthancServer, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def nas(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd-nas")
    odd_files.write_all(root / "odd")
    write_series(root / "ordinary" / "CT", 4, PatientName="ORDINARY^ONE", PatientID="ORD1")
    write_series(root / "ordinary" / "MR", 3, PatientName="ORDINARY^TWO", PatientID="ORD2", Modality="MR")
    cut = write_dicom(root / "ordinary" / "cut.dcm", PatientID="CUT")
    cut.write_bytes(cut.read_bytes()[:400])
    latin1 = os.fsencode(root / "odd") + b"/case2/K\xf6ln/notes.txt"  # beside case 2's file: not an image
    with open(latin1, "wb") as fh:
        fh.write(b"exported by the old PACS")
    return root


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, nas):
    work = tmp_path_factory.mktemp("orthanc-odd")
    server = OrthancServer(work, {"Connection": {"Type": "local", "Path": str(nas)},
                                  "ShareServer": {"Port": free_port()}})
    server.start()
    yield server
    server.stop()


def search(orthanc: OrthancServer, q: str) -> list[dict]:
    answer = orthanc.get("/nas/search", params={"q": q})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_every_case_is_indexed_beside_ordinary_files_twice(orthanc):
    s = orthanc.index()
    assert s["phase"] == "done", s.get("failure")
    assert s["errors"] == 2, s["error_samples"]
    reasons = {e["path"]: e["error"] for e in s["error_samples"]}
    assert "truncated" in reasons["ordinary/cut.dcm"]
    assert "not a DICOM file" in reasons["odd/case2/K\\xf6ln/notes.txt"]
    assert not [name for name in os.listdir(orthanc.workdir / "storage" / "nas") if ".tmp" in name]

    assert [r["file_count"] for r in search(orthanc, "ordinary one")] == [4]
    assert [r["file_count"] for r in search(orthanc, "ordinary two")] == [3]
    for patient, values, count in odd_files.EXPECTED:
        found = [r for r in search(orthanc, patient) if r["PatientID"] == patient
                 and all(r[k] == v for k, v in values.items())]
        assert [r["file_count"] for r in found] == [count], (patient, values, search(orthanc, patient))
    # the right values are what a radiologist finds
    assert search(orthanc, "иванов")[0]["StudyDescription"] == "Грудная клетка"
    assert search(orthanc, "παπαδόπουλος")[0]["PatientID"] == "P43"
    assert search(orthanc, "garcia marquez")[0]["StudyDescription"] == "Tórax"
    assert search(orthanc, "muller jurgen")[0]["PatientID"] == "P2B"
    assert search(orthanc, "large multiframe")[0]["PatientName"] == "DEFLATE^BERTA"

    again = orthanc.index()
    assert again["phase"] == "done" and again["errors"] == 0
    assert again["files_skipped"] == again["files_processed"] == s["files_processed"]
    assert "Traceback" not in orthanc.log() and "Logging error" not in orthanc.log()


def test_a_latin1_named_file_is_listed_escaped_and_shared_as_it_is(orthanc, nas):
    if orthanc.get("/nas/status").json()["phase"] != "done":
        orthanc.index()
    (series,) = [r for r in search(orthanc, "muller") if r["PatientID"] == "P2B"]
    detail = orthanc.get(f"/nas/series/{series['series_key']}").json()
    assert [f["path"] for f in detail["files"]] == ["odd/case2/K\\xf6ln/M\\xfcller.dcm"]

    with open(os.fsencode(nas) + b"/odd/case2/K\xf6ln/M\xfcller.dcm", "rb") as fh:
        original = fh.read()
    for layout in ("dicomdir", "folders"):
        answer = orthanc.post("/nas/shares", json={"series": [series["series_key"]], "layout": layout})
        assert answer.status_code == 201, answer.text
        download = requests.get(answer.json()["url"] + "/download", timeout=60)
        assert download.status_code == 200, download.text[:300]
        zipped = zipfile.ZipFile(io.BytesIO(download.content))
        (name,) = [n for n in zipped.namelist() if n != "DICOMDIR"]
        assert zipped.read(name) == original
        if layout == "folders":
            assert name.endswith("M_xfcller.dcm")
