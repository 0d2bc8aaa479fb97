"""The DICOM node on PostgreSQL (SPEC "Several Orthanc nodes", "Database"): a real Orthanc whose index is
in a private PostgreSQL cluster (tests/support/postgres.py) answers findscu and movescu, and records its
retrievals in the database's one audit, which another node reads."""

from __future__ import annotations

import re

import psycopg
import pydicom
import pytest
from tests.support.dcmtk import StoreSCP, find, run
from tests.support.dicom import write_series
from tests.support.orthanc import free_port

pytestmark = pytest.mark.integration


def start_node(orthanc_factory, tmp_path, name: str, nas, url: str, extra: dict | None = None, **more):
    return orthanc_factory({"Connection": {"Type": "local", "Path": str(nas)},
                            "DataDirectory": str(tmp_path / name / "nasdata"),
                            "Database": {"Type": "postgresql", "Url": url},
                            "ShareServer": {"Port": free_port()}, **more}, workdir=tmp_path / name, extra=extra)


def test_find_and_move_from_the_node_on_postgresql_audited_once_for_every_node(orthanc_factory, tmp_path,
                                                                                pg_database):
    nas = tmp_path / "nas"
    ct = write_series(nas / "A" / "CT", 4, PatientName="Müller^Jürgen", charset="ISO_IR 192", PatientID="PG1", Modality="CT",
                      StudyDate="20240105")
    write_series(nas / "B" / "MR", 2, PatientName="DOE^JOHN", PatientID="PG2", Modality="MR", StudyDate="20230115")
    node_port, ws_port = free_port(), free_port()
    a = start_node(orthanc_factory, tmp_path, "a", nas, pg_database,
                   DicomServer={"Enabled": True, "AET": "NAS", "Port": node_port},
                   extra={"DicomModalities": {"ws": ["WS1", "127.0.0.1", ws_port]}})
    assert a.index()["phase"] == "done"
    assert run("echoscu", "-aet", "WS1", "-aec", "NAS", "127.0.0.1", node_port).returncode == 0

    # C-FIND: a name with a wild card in another case, a date range and a modality of the study
    answers = find(node_port, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientName": "müller*",
                               "StudyDate": "20240101-20240131", "ModalitiesInStudy": "CT",
                               "NumberOfStudyRelatedInstances": ""}, tmp_path / "find")
    study = pydicom.dcmread(ct[0], stop_before_pixels=True).StudyInstanceUID
    assert [(a_.StudyInstanceUID, str(a_.PatientName), a_.ModalitiesInStudy, a_.NumberOfStudyRelatedInstances)
            for a_ in answers] == [(study, "Müller^Jürgen", "CT", 4)]
    assert find(node_port, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientName": "müller*",
                            "ModalitiesInStudy": "MR"}, tmp_path / "find") == []

    # C-MOVE to the workstation: every file of the study, byte for byte the same SOP instances
    with StoreSCP(tmp_path / "ws", port=ws_port) as scp:
        result = run("movescu", "-S", "-aet", "WS1", "-aec", "NAS", "-aem", "WS1", "127.0.0.1", node_port,
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}")
        assert result.returncode == 0, result.stderr
        received = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in scp.files()}
    assert received == {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in ct}

    # the audit is in PostgreSQL, not in a dicom.db of the node, and every node reads it
    assert not (tmp_path / "a" / "nasdata" / "dicom.db").exists()
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT caller_aet, operation, sent, failed FROM retrievals").fetchall() == \
            [("WS1", "C-MOVE", 4, 0)]
    b = start_node(orthanc_factory, tmp_path, "b", nas, pg_database)
    for node in (a, b):
        found = node.get("/nas/dicom/retrievals?limit=5").json()
        assert [(r["caller_aet"], r["operation"], r["destination"], r["level"], r["files"], r["sent"], r["failed"],
                 r["outcome"], r["keys"]) for r in found] == \
            [("WS1", "C-MOVE", "WS1", "STUDY", 4, 4, 0, "done", {"StudyInstanceUID": study})]
    bad = b.get("/nas/dicom/retrievals?limit=0")
    assert bad.status_code == 400 and bad.json()["field"] == "limit"



def dimse_status(result) -> tuple[int, str | None]:
    """The last response status a dcmtk tool run with `-d` received, and its Error Comment (or None)."""
    output = result.stdout + result.stderr
    statuses = re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", output)
    comments = re.findall(r"\(0000,0902\) LO \[(.*)\]", output)  # dcmtk's "Status Detail"
    assert statuses, output[-3000:]
    return int(statuses[-1], 16), comments[-1].rstrip() if comments else None  # (LO is padded to even length)


def test_with_postgresql_down_the_node_refuses_for_lack_of_resources_then_answers_by_itself(
        orthanc_factory, tmp_path, pg_database, postgres):
    """SPEC "a dropped NAS or database is retried, then reported": C-FIND A700, C-MOVE and C-GET A701 (PS3.4
    C.4.1.1.4, C.4.2.1.5, C.4.3.1.4) with a comment saying what is wrong, associations released, C-ECHO and
    REST still answered; the same C-FIND answers once PostgreSQL is back, Orthanc untouched, and the audit
    then holds the refused retrievals."""
    nas = tmp_path / "nas"
    write_series(nas / "CT", 2, PatientName="DOWN^TEST", PatientID="DOWN1", Modality="CT")
    node_port, ws_port = free_port(), free_port()
    a = start_node(orthanc_factory, tmp_path, "a", nas, pg_database,
                   DicomServer={"Enabled": True, "AET": "NAS", "Port": node_port},
                   extra={"DicomModalities": {"ws": ["WS1", "127.0.0.1", ws_port]}})
    assert a.index()["phase"] == "done"
    query = {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "", "PatientID": "DOWN1"}
    [study] = [ds.StudyInstanceUID for ds in find(node_port, query, tmp_path / "find")]
    peer = ["-d", "-S", "-aet", "WS1", "-aec", "NAS", "127.0.0.1", node_port, "-k", "QueryRetrieveLevel=STUDY"]
    comment = "the NAS index's database cannot be reached: try again later"
    postgres.stop()
    try:
        assert run("echoscu", "-aet", "WS1", "-aec", "NAS", "127.0.0.1", node_port).returncode == 0
        found = run("findscu", *peer, "-k", "PatientID=DOWN1", "-k", "StudyInstanceUID")
        with StoreSCP(tmp_path / "ws", port=ws_port) as scp:
            moved = run("movescu", *peer, "-aem", "WS1", "-k", f"StudyInstanceUID={study}")
            assert scp.files() == []
        got = run("getscu", *peer, "-od", tmp_path, "-k", f"StudyInstanceUID={study}")
        assert a.get("/system").status_code == 200
        assert a.get("/nas/search").json()["kind"] == "database"
    finally:
        postgres.start()
    assert dimse_status(found) == (0xA700, comment)
    assert dimse_status(moved) == (0xA701, comment)
    assert dimse_status(got) == (0xA701, comment)
    for result in (found, moved, got):  # each association released, none aborted
        output = result.stdout + result.stderr
        assert "Releasing Association" in output and "Abort" not in output, output[-3000:]
    log = a.log()
    assert "C-FIND from WS1 failed" in log and "C-MOVE from WS1 failed" in log and "C-GET from WS1 failed" in log
    assert "the audit of a C-GET is kept back until its database answers" in log

    # back by itself: the same C-FIND answers at once; the audit, read again, has both refusals, once each
    assert [ds.StudyInstanceUID for ds in find(node_port, query, tmp_path / "find")] == [study]
    audit = a.get("/nas/dicom/retrievals").json()
    assert [(r["operation"], r["outcome"], r["files"], r["sent"]) for r in audit] == \
        [("C-GET", "failed", 0, 0), ("C-MOVE", "failed", 0, 0)]
    assert all("the NAS index's database" in r["detail"] for r in audit)
    with psycopg.connect(pg_database) as conn:
        assert conn.execute("SELECT count(*) FROM retrievals").fetchone()[0] == 2
