"""The DICOM node on PostgreSQL (SPEC "Several Orthanc nodes", "Database"): a real Orthanc whose index is
in a private PostgreSQL cluster (tests/support/postgres.py) answers findscu and movescu, and records its
retrievals in the database's one audit, which another node reads."""

from __future__ import annotations

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
