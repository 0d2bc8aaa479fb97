"""The NAS as a DICOM node, in a real Orthanc, against dcmtk's findscu, movescu, getscu and storescp."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from tests.support.dcmtk import StoreSCP, body, find, run
from tests.support.dicom import write_series
from tests.support.odd_files import CT_IMAGE, base
from tests.support.orthanc import OrthancServer, free_port
from tests.support.qr_corpus import PATIENTS, QUERIES, expected, rows_of, write_qr_corpus

pytestmark = pytest.mark.integration
LONG = 300  # files of the series a move is cancelled in


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    """Orthanc (with its own DICOM server) and the node on a corpus; WS1 is a modality of Orthanc's."""
    root = tmp_path_factory.mktemp("qr-nas")
    rows = write_qr_corpus(root)
    # a long series, to cancel a move (and a find) in its course
    rows += rows_of(write_series(root / "LONG", LONG, PatientID="LONG", PatientName="LONG^SERIES"), "LONG")
    rows += rows_of(write_no_class_series(root / "NOCLASS"), "NOCLASS")
    work = tmp_path_factory.mktemp("qr-orthanc")
    ws_port, node_port = free_port(), free_port()
    server = OrthancServer(work, nas={
        "Connection": {"Type": "local", "Path": str(root)}, "DataDirectory": str(work / "nasdata"),
        "ShareServer": {"Port": free_port()},
        "DicomServer": {"Enabled": True, "AET": "NAS", "Port": node_port},
    }, extra={"DicomServerEnabled": True, "DicomAet": "ORTHANC",
              "DicomModalities": {"ws": ["WS1", "127.0.0.1", ws_port]}})
    server.start()
    try:
        assert server.index()["phase"] == "done"
        yield {"orthanc": server, "rows": rows, "port": node_port, "ws_port": ws_port, "work": work}
    finally:
        server.stop()


def write_no_class_series(folder) -> list:
    """One series of four files, two of them without SOP Class UID (0008,0016): one with a meta group that
    names the class (MediaStorageSOPClassUID), one without meta group at all (implicit VR, no preamble);
    beside them an ordinary file and one without meta group that has its SOP class."""
    study, series = generate_uid(), generate_uid()
    paths = []
    for number, (name, has_class, has_meta) in enumerate([("with-class", True, True), ("meta-only", False, True),
                                                           ("raw-no-class", False, False),
                                                           ("raw-with-class", True, False)], 1):
        ds = base(study, series, generate_uid(), PatientID="NOCLASS", PatientName="NO^CLASS",
                  InstanceNumber=number, SOPClassUID=None if not has_class else CT_IMAGE)
        path = folder / f"{name}.dcm"
        folder.mkdir(parents=True, exist_ok=True)
        if has_meta:
            ds.file_meta = FileMetaDataset()
            ds.file_meta.MediaStorageSOPClassUID = CT_IMAGE
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.save_as(path, enforce_file_format=True)
        else:
            pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
        paths.append(path)
    assert paths[2].read_bytes()[128:132] != b"DICM"
    return paths


def audit_rows(node) -> list[dict]:
    conn = sqlite3.connect(node["work"] / "nasdata" / "dicom.db")
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM retrievals ORDER BY id")]
    finally:
        conn.close()


def uid(node, series: str, keyword: str = "SeriesInstanceUID") -> str:
    return next(r[keyword] for r in node["rows"] if r["series"] == series)


# -- association ------------------------------------------------------------------------
def test_known_callers_are_accepted_and_unknown_ones_rejected(node):
    port = node["port"]
    assert run("echoscu", "-aet", "WS1", "-aec", "NAS", "127.0.0.1", port).returncode == 0
    refused = run("echoscu", "-aet", "STRANGER", "-aec", "NAS", "127.0.0.1", port)
    assert refused.returncode != 0 and "Rejected" in refused.stderr + refused.stdout
    assert "STRANGER" in node["orthanc"].log() and "not an allowed caller" in node["orthanc"].log()
    # a modality added through Orthanc's REST API counts at the next association
    assert run("echoscu", "-aet", "LATE", "-aec", "NAS", "127.0.0.1", port).returncode != 0
    assert node["orthanc"].put("/modalities/late", json={"AET": "LATE", "Host": "127.0.0.1", "Port": 1}).ok
    assert run("echoscu", "-aet", "LATE", "-aec", "NAS", "127.0.0.1", port).returncode == 0
    # the node is Orthanc's modality "nas" (RegisterInOrthanc), and answers Orthanc's own C-ECHO
    assert node["orthanc"].get("/modalities/nas/configuration").json()["Port"] == port
    assert node["orthanc"].post("/modalities/nas/echo", json={}).status_code == 200


# -- C-FIND: every level and matching rule against answers computed from the corpus -------------
@pytest.mark.parametrize("model, level, query", QUERIES, ids=lambda v: str(v))
def test_find_matches_as_the_standard_says(node, tmp_path, model, level, query):
    unique = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID"}[level]
    answers = find(node["port"], {"QueryRetrieveLevel": level, unique: "", **query}, tmp_path, model=model)
    assert {str(a[unique].value) for a in answers} == expected(node["rows"], level, query)
    for a in answers:
        assert a.SpecificCharacterSet == "ISO_IR 192" and a.QueryRetrieveLevel == level


def test_find_with_uid_lists_at_every_level(node, tmp_path):
    studies = [uid(node, "S1.1", "StudyInstanceUID"), uid(node, "S4.1", "StudyInstanceUID")]
    answers = find(node["port"], {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "\\".join(studies)}, tmp_path)
    assert {a.StudyInstanceUID for a in answers} == set(studies)
    series = uid(node, "S1.1")
    sops = [r["SOPInstanceUID"] for r in node["rows"] if r["series"] == "S1.1"]
    answers = find(node["port"], {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": studies[0],
                                  "SeriesInstanceUID": series, "SOPInstanceUID": "", "SOPClassUID": "",
                                  "InstanceNumber": ""}, tmp_path)
    assert [a.SOPInstanceUID for a in answers] == sops  # in instance order
    assert {a.SOPClassUID for a in answers} == {"1.2.840.10008.5.1.4.1.1.2"}
    answers = find(node["port"], {"QueryRetrieveLevel": "IMAGE", "StudyInstanceUID": studies[0],
                                  "SeriesInstanceUID": series, "SOPInstanceUID": "\\".join(sops[:2])}, tmp_path)
    assert {a.SOPInstanceUID for a in answers} == set(sops[:2])


def test_find_returns_the_usual_and_computed_keys_in_utf8(node, tmp_path):
    answers = find(node["port"], {
        "QueryRetrieveLevel": "STUDY", "PatientID": "", "PatientName": "", "StudyInstanceUID": "", "StudyDate": "",
        "StudyTime": "", "AccessionNumber": "", "StudyID": "", "ReferringPhysicianName": "", "ModalitiesInStudy": "",
        "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": "", "StudyDescription": "",
        "PatientComments": ""}, tmp_path)
    by_id = {a.StudyID: a for a in answers}
    assert set(by_id) == {"S1", "S2", "S3", "S4", "S5", ""}  # the long series' study has no StudyID
    s1 = by_id["S1"]
    assert str(s1.PatientName) == PATIENTS["PAT1"]["PatientName"] and str(s1.ReferringPhysicianName) == "House^Gregory"
    assert (s1.StudyDate, s1.StudyTime, s1.AccessionNumber) == ("20240105", "101500", "ACC1")
    assert (s1.NumberOfStudyRelatedSeries, s1.NumberOfStudyRelatedInstances) == (2, 5)
    assert str(by_id["S4"].PatientName) == "Dupré^Zoé" and str(by_id["S4"].ReferringPhysicianName) == "Lefèvre^Hélène"
    assert set(by_id["S3"].ModalitiesInStudy) == {"CT", "MR"}
    assert by_id["S2"].ModalitiesInStudy == "MR"
    assert by_id["S1"].PatientComments == ""  # asked for, not in the index: returned empty
    patients = find(node["port"], {"QueryRetrieveLevel": "PATIENT", "PatientID": "PAT2",
                                   "NumberOfPatientRelatedStudies": "", "NumberOfPatientRelatedSeries": "",
                                   "NumberOfPatientRelatedInstances": ""}, tmp_path, model="-P")
    assert [(p.NumberOfPatientRelatedStudies, p.NumberOfPatientRelatedSeries, p.NumberOfPatientRelatedInstances)
            for p in patients] == [(2, 3, 4)]
    series = find(node["port"], {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": uid(node, "S1.1",
                                 "StudyInstanceUID"), "SeriesInstanceUID": "", "SeriesNumber": "",
                                 "NumberOfSeriesRelatedInstances": "", "BodyPartExamined": ""}, tmp_path)
    assert sorted((s.SeriesNumber, s.NumberOfSeriesRelatedInstances, s.BodyPartExamined) for s in series) == \
        [(1, 3, "CHEST"), (2, 2, "CHEST")]


# -- C-MOVE, C-GET ----------------------------------------------------------------------
def test_move_delivers_the_files_byte_for_byte_and_is_audited(node, tmp_path):
    study = uid(node, "S1.1", "StudyInstanceUID")
    nas_files = {r["SOPInstanceUID"]: r["path"] for r in node["rows"] if r["StudyInstanceUID"] == study}
    with StoreSCP(tmp_path / "ws", port=node["ws_port"]) as scp:
        result = run("movescu", "-S", "-aet", "WS1", "-aec", "NAS", "-aem", "WS1", "127.0.0.1", node["port"],
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}")
        assert result.returncode == 0, result.stderr
        received = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in scp.files()}
    assert set(received) == set(nas_files)
    for sop, path in received.items():
        if "1.2.840.10008.1.2.1" in str(pydicom.dcmread(nas_files[sop]).file_meta.TransferSyntaxUID):
            assert body(path) == body(nas_files[sop])  # sent as stored
        else:  # implicit VR: storescp prefers explicit; converted without loss
            assert pydicom.dcmread(path).PixelData == pydicom.dcmread(nas_files[sop]).PixelData
    last = audit_rows(node)[-1]
    assert (last["caller_aet"], last["operation"], last["destination"], last["level"]) == \
        ("WS1", "C-MOVE", "WS1", "STUDY")
    assert (last["files"], last["sent"], last["failed"], last["outcome"]) == (5, 5, 0, "done")
    assert study in last["keys"]


def test_a_compressed_file_fails_with_its_reason_unless_the_peer_accepts_it(node, tmp_path):
    series = uid(node, "S5.1")
    path = next(r["path"] for r in node["rows"] if r["series"] == "S5.1")
    move = ["movescu", "-S", "-aet", "WS1", "-aec", "NAS", "-aem", "WS1", "127.0.0.1", node["port"],
            "-k", "QueryRetrieveLevel=SERIES", "-k", f"SeriesInstanceUID={series}"]
    with StoreSCP(tmp_path / "plain", port=node["ws_port"]) as scp:
        result = run(*move)
        assert scp.files() == []
    assert "Failed" in result.stderr + result.stdout or result.returncode != 0
    last = audit_rows(node)[-1]
    assert (last["sent"], last["failed"], last["outcome"]) == (0, 1, "done_with_failures")
    assert "JPEG 2000" in last["detail"] and "without loss" in last["detail"]
    with StoreSCP(tmp_path / "all", port=node["ws_port"], accept_all=True) as scp:
        assert run(*move).returncode == 0
        assert [body(p) for p in scp.files()] == [body(path)]


def test_get_on_the_same_association(node, tmp_path):
    series = uid(node, "S4.1")
    nas = {r["SOPInstanceUID"]: r["path"] for r in node["rows"] if r["series"] == "S4.1"}
    out = tmp_path / "get"
    out.mkdir()
    result = run("getscu", "-S", "-aet", "WS1", "-aec", "NAS", "-od", out, "127.0.0.1", node["port"],
                 "-k", "QueryRetrieveLevel=SERIES", "-k", f"SeriesInstanceUID={series}")
    assert result.returncode == 0, result.stderr
    got = {pydicom.dcmread(p).SOPInstanceUID: p for p in out.iterdir()}
    assert set(got) == set(nas) and all(body(got[s]) == body(nas[s]) for s in got)
    last = audit_rows(node)[-1]
    assert (last["operation"], last["caller_aet"], last["sent"], last["failed"]) == ("C-GET", "WS1", 2, 0)


def test_move_to_an_unknown_destination_or_without_keys_is_refused(node):
    study = uid(node, "S1.1", "StudyInstanceUID")
    result = run("movescu", "-S", "-aet", "WS1", "-aec", "NAS", "-aem", "NOWHERE", "127.0.0.1", node["port"],
                 "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}")
    assert "MoveDestinationUnknown" in result.stderr  # A801
    assert audit_rows(node)[-1]["outcome"] == "refused"
    result = run("movescu", "-S", "-aet", "WS1", "-aec", "NAS", "-aem", "WS1", "127.0.0.1", node["port"],
                 "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID=")
    assert result.returncode != 0 and "error status" in result.stderr
    last = audit_rows(node)[-1]
    assert last["outcome"] == "refused" and "needs StudyInstanceUID" in last["detail"]


def test_orthanc_queries_the_node_and_retrieves_a_study_into_itself(node):
    orthanc = node["orthanc"]
    study = uid(node, "S4.1", "StudyInstanceUID")
    query = orthanc.post("/modalities/nas/query", json={"Level": "Study", "Query": {"PatientID": "PAT3",
                                                                                     "StudyInstanceUID": ""}})
    assert query.status_code == 200, query.text
    qid = query.json()["ID"]
    answers = orthanc.get(f"/queries/{qid}/answers?expand").json()
    assert [a["0020,000d"]["Value"] for a in answers] == [study]
    assert orthanc.post(f"/queries/{qid}/retrieve", data="ORTHANC", timeout=120).status_code == 200
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(orthanc.get("/instances").json()) < 2:
        time.sleep(0.2)
    found = orthanc.post("/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study},
                                              "Expand": True}).json()
    nas = {r["SOPInstanceUID"]: r["path"] for r in node["rows"] if r["StudyInstanceUID"] == study}
    assert {i["MainDicomTags"]["SOPInstanceUID"] for i in found} == set(nas)
    for instance in found:
        served = orthanc.get(f"/instances/{instance['ID']}/file").content
        assert pydicom.dcmread(__import__("io").BytesIO(served)).PixelData == \
            pydicom.dcmread(nas[instance["MainDicomTags"]["SOPInstanceUID"]]).PixelData
    deadline = time.monotonic() + 60  # Orthanc has the files before the node writes the audit of its move
    while audit_rows(node)[-1]["caller_aet"] != "ORTHANC" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert audit_rows(node)[-1]["caller_aet"] == "ORTHANC"


def test_a_cancelled_move_stops_early(node, tmp_path):
    with StoreSCP(tmp_path / "cancel", port=node["ws_port"]) as scp:
        result = run("movescu", "-P", "-aet", "WS1", "-aec", "NAS", "-aem", "WS1", "--cancel", "1", "-v", "127.0.0.1",
                     node["port"], "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=LONG")
        received = len(scp.files())
    last = audit_rows(node)[-1]
    assert last["outcome"] == "cancelled" and last["files"] == LONG, result.stderr
    assert 1 <= received < LONG and last["sent"] == received
    assert "Cancel" in result.stderr + result.stdout or result.returncode != 0


def test_a_cancelled_find_stops_sending_matches(node, tmp_path):
    """C-CANCEL (PS3.7 9.3.2.3) of a C-FIND with many matches, sent right after the request: the node sends
    no more matches and ends with status Cancel (FE00)."""
    model = StudyRootQueryRetrieveInformationModelFind
    ae = AE(ae_title="WS1")
    ae.add_requested_context(model)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SeriesInstanceUID = uid(node, "LONG")
    identifier.SOPInstanceUID = ""
    assoc = ae.associate("127.0.0.1", node["port"], ae_title="NAS")
    assert assoc.is_established
    try:
        responses = assoc.send_c_find(identifier, model, msg_id=7)  # the request is sent; answers are read below
        assoc.send_c_cancel(7, query_model=model)
        statuses = [status.Status for status, _ in responses]
    finally:
        assoc.release()
    assert statuses[-1] == 0xFE00 and statuses.count(0xFF00) < LONG, (len(statuses), hex(statuses[-1]))
    everything = find(node["port"], {"QueryRetrieveLevel": "IMAGE", "SeriesInstanceUID": uid(node, "LONG"),
                                     "SOPInstanceUID": ""}, tmp_path)
    assert len(everything) == LONG  # not cancelled: every match


def test_a_taken_port_is_logged_and_the_rest_works(tmp_path, orthanc_factory):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        root = tmp_path / "nas"
        root.mkdir()
        server = orthanc_factory({"Connection": {"Type": "local", "Path": str(root)},
                                  "DicomServer": {"Enabled": True, "Port": port}})
        assert server.get("/nas/status").status_code == 200
        assert f"cannot listen on 127.0.0.1:{port}" in server.log()
        assert server.get("/modalities").json() == []  # not registered in Orthanc either


# -- files indexed without a SOP Class UID ------------------------------------------------------
def test_files_without_sop_class_are_found_and_moved_or_failed_with_their_reason(node, tmp_path):
    rows = {Path(r["path"]).stem: r for r in node["rows"] if r["series"] == "NOCLASS"}
    sop = {name: row["SOPInstanceUID"] for name, row in rows.items()}
    study, series = rows["with-class"]["StudyInstanceUID"], rows["with-class"]["SeriesInstanceUID"]
    answers = find(node["port"], {"QueryRetrieveLevel": "IMAGE", "SeriesInstanceUID": series, "SOPInstanceUID": "",
                                  "SOPClassUID": "", "InstanceNumber": ""}, tmp_path)
    assert {a.SOPInstanceUID: a.SOPClassUID for a in answers} == \
        {sop[name]: CT_IMAGE if name.endswith("with-class") else "" for name in sop}
    # as an index of an older version holds it (no SOP class): the file's own is sent
    with sqlite3.connect(node["work"] / "nasdata" / "index.db") as index:
        index.execute("UPDATE files SET SOPClassUID=NULL WHERE SOPInstanceUID=?", (sop["raw-with-class"],))
    with StoreSCP(tmp_path / "ws", port=node["ws_port"]) as scp:
        result = run("movescu", "-S", "-aet", "WS1", "-aec", "NAS", "-aem", "WS1", "127.0.0.1", node["port"],
                     "-k", "QueryRetrieveLevel=SERIES", "-k", f"StudyInstanceUID={study}",
                     "-k", f"SeriesInstanceUID={series}")
        received = {ds.SOPInstanceUID: ds.SOPClassUID for ds in map(pydicom.dcmread, scp.files())}
    assert received == {sop["with-class"]: CT_IMAGE, sop["raw-with-class"]: CT_IMAGE}
    last = audit_rows(node)[-1]
    assert (last["files"], last["sent"], last["failed"], last["outcome"]) == (4, 2, 2, "done_with_failures")
    assert "no SOP Class UID (0008,0016)" in last["detail"]
    assert "OneOrMoreFailures" in result.stderr  # B000 (PS3.4 C.4.2.1.5): the peer learns of the failures
