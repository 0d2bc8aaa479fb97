import json
import os
import sqlite3

import pytest

from orthanc_nas.catalog import Catalog, connect, migrate, series_key
from orthanc_nas.catalog_migrations import MIGRATIONS
from orthanc_nas.catalog_writer import CatalogWriter
from orthanc_nas.sources import FileEntry
from orthanc_nas.status import IndexStatus


@pytest.fixture(autouse=True)
def engine(db_engine):
    """Every test of this module on SQLite and on PostgreSQL (see tests/conftest.py)."""
    return db_engine


def rec(series="1.2.3", study="9.9", number=1, instance=1, name="DOE^JOHN"):
    return {"PatientName": name, "PatientID": "P1", "StudyInstanceUID": study, "SeriesInstanceUID": series,
            "SeriesNumber": number, "InstanceNumber": instance, "SOPInstanceUID": f"{series}.{instance}",
            "Modality": "CT", "StudyDate": "20240101"}


def test_series_key_groups_by_uid_then_study_and_number():
    assert series_key(rec(series="1.2"), "a/x") == series_key(rec(series="1.2", study="other"), "b/y")
    no_uid = rec(series=None, study="7.7", number=3)
    assert series_key(no_uid, "a") == series_key(dict(no_uid, InstanceNumber=9), "b")
    assert series_key(no_uid, "a") != series_key(rec(series=None, study="7.7", number=4), "a")
    key = series_key(rec(), "a")
    assert key.replace("-", "").replace("_", "").isalnum() and len(key) == 20


def test_migrations_are_recorded_and_rerun_safely(tmp_path):
    conn = connect(str(tmp_path / "index.db"))
    assert migrate(conn) == len(MIGRATIONS)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert migrate(conn) == len(MIGRATIONS)  # nothing applied twice
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_writes_group_files_and_count_series(tmp_path):
    cat = Catalog(str(tmp_path))
    w = CatalogWriter(cat)
    w.begin_run()
    w.write([(FileEntry(f"s1/{i}", 10, 1), rec(instance=i), None) for i in range(3)]
            + [(FileEntry("s2/0", 10, 1), rec(series="4.5"), None), (FileEntry("bad", 3, 1), None, "not DICOM")])
    rows = dict(w.conn.execute("SELECT SeriesInstanceUID, file_count FROM series").fetchall())
    assert rows == {"1.2.3": 3, "4.5": 1}
    assert w.known(["s1/0", "bad", "nope"]) == {"s1/0": (10, 1), "bad": (3, 1)}
    # a file re-read into another series moves, and the emptied series disappears
    w.write([(FileEntry("s2/0", 11, 2), rec(), None)])
    rows = dict(w.conn.execute("SELECT SeriesInstanceUID, file_count FROM series").fetchall())
    assert rows == {"1.2.3": 4}
    assert cat.counts() == {"files": 5, "series": 1}


def test_remove_unseen_keeps_what_this_run_saw(tmp_path):
    cat = Catalog(str(tmp_path))
    w = CatalogWriter(cat)
    w.begin_run()
    w.write([(FileEntry(f"f{i}", 1, 1), rec(instance=i), None) for i in range(4)])
    w.begin_run()
    w.mark_seen(["f0", "f1"])
    w.write([(FileEntry("f2", 1, 1), rec(instance=2), None)])
    assert w.remove_unseen() == 1
    assert {r[0] for r in w.conn.execute("SELECT path FROM files")} == {"f0", "f1", "f2"}
    assert w.conn.execute("SELECT file_count FROM series").fetchone()[0] == 3


def test_reader_without_index_is_not_found_with_a_hint(tmp_path):
    import pytest

    from orthanc_nas.errors import NotFound
    with pytest.raises(NotFound) as err:
        Catalog(str(tmp_path)).reader()
    assert "index" in err.value.hint.lower()


def test_status_file_is_written_every_50_files_and_atomically(tmp_path, monkeypatch):
    st = IndexStatus(str(tmp_path))
    writes = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (writes.append(b), real_replace(a, b)))
    st.start(workers=4)
    assert len(writes) == 1
    for _ in range(120):
        st.add_processed(1)
    assert len(writes) == 3  # after 50 and 100
    saved = json.loads((tmp_path / "index_status.json").read_text())
    assert saved["files_processed"] == 100 and saved["running"] is True
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_status_left_running_by_a_crash_is_interrupted(tmp_path):
    st = IndexStatus(str(tmp_path))
    st.start(workers=4)
    st.add_enumerated(500)
    st.add_processed(60)
    fresh = IndexStatus(str(tmp_path))
    fresh.load(series_count=7)
    snap = fresh.snapshot()
    assert snap["phase"] == "interrupted" and snap["running"] is False
    assert snap["files_processed"] == 60 and snap["series_count"] == 7 and snap["warnings"]
    assert json.loads((tmp_path / "index_status.json").read_text())["phase"] == "interrupted"


def test_a_finished_run_reads_back_whole_after_a_restart(tmp_path):
    st = IndexStatus(str(tmp_path))
    st.start(workers=4)
    st.add_enumerated(5)
    st.update(enumeration_done=True, files_removed=2)
    st.fail({"error": "cannot reach the NAS", "kind": "network", "hint": "Check the NAS."})
    fresh = IndexStatus(str(tmp_path))
    fresh.load(series_count=3)
    snap = fresh.snapshot()
    assert snap["phase"] == "failed" and snap["failure"]["kind"] == "network"  # still says why
    assert snap["enumeration_done"] is True and snap["files_removed"] == 2 and snap["enumerated_files"] == 5


def test_snapshot_has_the_fields_of_the_spec(tmp_path):
    snap = IndexStatus(str(tmp_path)).snapshot()
    for key in ("running", "phase", "enumerated_files", "files_processed", "files_skipped", "series_count",
                "errors", "error_samples", "workers", "files_per_second", "eta_seconds", "started_at",
                "updated_at", "finished_at", "warnings"):
        assert key in snap
    assert snap["phase"] == "idle" and snap["running"] is False


@pytest.mark.sqlite_only
def test_an_index_of_an_older_version_is_upgraded(tmp_path):
    path = tmp_path / "index.db"
    conn = sqlite3.connect(path)
    migrate(conn, MIGRATIONS[:1])
    conn.close()
    conn = Catalog(str(tmp_path)).reader()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
