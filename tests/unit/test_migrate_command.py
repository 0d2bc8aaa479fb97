"""`python -m orthanc_nas migrate --from DIR --to postgresql://…`: an SQLite index, its shares and audits
copied into a real PostgreSQL database (tests/support/postgres.py); share links keep working."""

from __future__ import annotations

import pytest
from tests.support.series import record, write

from orthanc_nas import store
from orthanc_nas.catalog import Catalog
from orthanc_nas.cli import main as cli
from orthanc_nas.dicom.audit import Retrieval, RetrievalAudit
from orthanc_nas.jobs import JobStore
from orthanc_nas.search import SearchParams, search
from orthanc_nas.shares import COMPLETE, ShareStore

UID = "1.2.826.0.1.3680043.2.1125.77"


def sqlite_data_directory(folder) -> dict:
    """An index of 3 series (6 files, one with a name that is not UTF-8), two shares, their audit, a job."""
    files = [(f"P{n}/s/{i}.dcm", record(PatientName=f"MOVE^P{n}", PatientID=f"M{n}", StudyDate="20240101",
                                         StudyInstanceUID=f"{UID}.{n}", SeriesInstanceUID=f"{UID}.{n}.1",
                                         SOPInstanceUID=f"{UID}.{n}.1.{i}", InstanceNumber=i, Modality="CT"))
             for n in range(3) for i in (1, 2)]
    files.append(("P0/s/K\udcf6ln.dcm", record(PatientName="MOVE^P0", PatientID="M0", StudyInstanceUID=f"{UID}.0",
                                               SeriesInstanceUID=f"{UID}.0.1", InstanceNumber=3, Modality="CT")))
    write(Catalog(str(folder), store.SqliteEngine(str(folder))), files)
    shares = ShareStore(str(folder), engine=store.SqliteEngine(str(folder)))
    kept, token = shares.create(["k1"], 24, "kept")
    revoked, revoked_token = shares.create(["k2"], 24, "revoked")
    shares.revoke(revoked.id)
    audit_id = shares.audit("10.0.0.1", kept.id, "started")
    shares.finish(audit_id, COMPLETE, 1234)
    shares.close()
    audit = RetrievalAudit(str(folder), store.SqliteEngine(str(folder)))
    audit.record(Retrieval("WS1", "10.0.0.2", "C-MOVE", "WS1", "SERIES", {"SeriesInstanceUID": "1.2"}, files=2, sent=2,
                           outcome="done"))
    audit.close()
    jobs = JobStore(str(folder), engine=store.SqliteEngine(str(folder)), clock=lambda: 1000.0)
    job = jobs.create(["k1"], "orthanc", 2)
    jobs.update(job, state="done", finished_at=1001.0, files_done=2)
    jobs.imported(job, "orthanc-i1", "orthanc-s1", "1.2.3", "md5")
    jobs.close()
    return {"token": token, "job": job, "revoked_token": revoked_token, "kept": kept.id, "audit_id": audit_id}


def test_an_sqlite_index_and_its_shares_move_into_postgresql(tmp_path, pg_database, capsys):
    made = sqlite_data_directory(tmp_path)
    assert cli(["migrate", "--from", str(tmp_path), "--to", pg_database]) == 0
    out = capsys.readouterr().out
    assert "index: " in out and " 7 files" in out

    engine = store.PostgresEngine(pg_database)
    try:
        catalog = Catalog(str(tmp_path / "elsewhere"), engine)  # nothing read from the SQLite files
        assert catalog.counts() == {"files": 7, "series": 3}
        latin1 = [f["path"] for f in catalog.series_files(search(catalog.reader(), SearchParams.parse(
            {"q": "move p0"})).series[0]["series_key"])]
        assert latin1[-1] == "P0/s/K\udcf6ln.dcm"  # the name that is not UTF-8, exactly as `os` gave it
        found = search(catalog.reader(), SearchParams.parse({"q": "move p1"}))
        assert [s["PatientID"] for s in found.series] == ["M1"] and found.series[0]["file_count"] == 2

        shares = ShareStore(str(tmp_path / "elsewhere"), engine=engine)
        share = shares.lookup(made["token"])  # the token still opens its share: only its hash moved
        assert share is not None and share.id == made["kept"] and share.refusal(share.created_at) is None
        assert shares.lookup(made["revoked_token"]).refusal(share.created_at) == "revoked"
        assert shares.completed(made["kept"]) == 1
        assert shares.audit("10.0.0.3", share.id, "started") > made["audit_id"]  # ids go on after the copied ones
        shares.close()
        retrievals = RetrievalAudit(str(tmp_path / "elsewhere"), engine).latest()
        assert [(r["caller_aet"], r["keys"]) for r in retrievals] == [("WS1", {"SeriesInstanceUID": "1.2"})]
        jobs = JobStore(str(tmp_path / "elsewhere"), engine=engine)  # jobs, and what retention may delete
        assert [(j["id"], j["state"], j["files_done"]) for j in jobs.list()] == [(made["job"], "done", 2)]
        assert [row["orthanc_id"] for row in jobs.expired(2000.0)] == ["orthanc-i1"]
        jobs.close()
    finally:
        engine.close()

    # a second copy into the same database is refused: nothing is merged or overwritten
    assert cli(["migrate", "--from", str(tmp_path), "--to", pg_database]) == 2
    assert "already holds rows" in capsys.readouterr().err


def test_a_folder_without_an_index_is_named(tmp_path, capsys):
    assert cli(["migrate", "--from", str(tmp_path), "--to", "postgresql://nobody@127.0.0.1:1/x"]) == 2
    assert "no index.db" in capsys.readouterr().err


@pytest.mark.parametrize("url", ["mysql://x", "/var/lib/nas"])
def test_the_target_must_be_a_postgresql_url(tmp_path, url, capsys):
    sqlite_data_directory(tmp_path)
    assert cli(["migrate", "--from", str(tmp_path), "--to", url]) == 2
    assert "postgresql://" in capsys.readouterr().err
