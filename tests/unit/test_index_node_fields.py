"""What the DICOM node needs from the index: read from the headers, stored, and completed in an older index."""

import io
import sqlite3

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from tests.support.dicom import CT_IMAGE, write_dicom, write_series

from orthanc_nas.catalog import NODE_FILE_FIELDS, NODE_SERIES_FIELDS, RUN_FIELDS, Catalog, migrate
from orthanc_nas.catalog_migrations import MIGRATIONS
from orthanc_nas.headers import HEAD_SIZE, read_record
from orthanc_nas.indexer import Indexer
from orthanc_nas.sources.local import LocalSource
from orthanc_nas.status import IndexStatus

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def record_of(path):
    return read_record(lambda p, n: open(p, "rb").read(n), str(path), HEAD_SIZE)


def test_the_node_fields_are_read(tmp_path):
    p = write_dicom(tmp_path / "a.dcm", charset="ISO_IR 100", SOPClassUID=MR_IMAGE, StudyTime="093015.25",
                    StudyID="S42", ReferringPhysicianName="Lefèvre^Hélène", InstitutionName="Hôpital Nord",
                    BodyPartExamined="KNEE")
    r = record_of(p)
    assert r["SOPClassUID"] == MR_IMAGE and r["TransferSyntaxUID"] == ExplicitVRLittleEndian
    assert (r["StudyTime"], r["StudyID"], r["BodyPartExamined"]) == ("093015.25", "S42", "KNEE")
    assert r["ReferringPhysicianName"] == "Lefèvre^Hélène" and r["InstitutionName"] == "Hôpital Nord"
    assert record_of(write_dicom(tmp_path / "b.dcm"))["InstitutionName"] is None


@pytest.mark.parametrize("name, syntax", [
    ("rtplan.dcm", ImplicitVRLittleEndian), ("MR_small_bigendian.dcm", ExplicitVRBigEndian),
    ("JPEG2000.dcm", JPEG2000), ("image_dfl.dcm", DeflatedExplicitVRLittleEndian),
])
def test_the_transfer_syntax_is_the_files_own(name, syntax):
    path = get_testdata_file(name)
    r = record_of(path)
    assert r["TransferSyntaxUID"] == syntax == pydicom.dcmread(path).file_meta.TransferSyntaxUID
    assert r["SOPClassUID"] == pydicom.dcmread(path).SOPClassUID


@pytest.mark.parametrize("implicit, syntax", [(True, ImplicitVRLittleEndian), (False, ExplicitVRLittleEndian)])
def test_a_file_without_meta_group_has_the_syntax_its_dataset_is_written_in(tmp_path, implicit, syntax):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    del ds.file_meta
    buf = io.BytesIO()
    ds.save_as(buf, implicit_vr=implicit, little_endian=True, enforce_file_format=False)
    (tmp_path / "raw").write_bytes(buf.getvalue())
    assert record_of(tmp_path / "raw")["TransferSyntaxUID"] == syntax


class CountingSource(LocalSource):
    """The local NAS, counting the files whose head is read."""

    def __init__(self, root):
        super().__init__(root)
        self.read: list[str] = []

    def read_head(self, path, size):
        self.read.append(path)
        return super().read_head(path, size)


def as_written_by_version_2(db: str) -> None:
    """Turn an index into what the version before the node fields wrote (schema 2, no such columns)."""
    conn = sqlite3.connect(db)
    before = sqlite3.connect(":memory:")
    migrate(before, MIGRATIONS[:2])
    kept = {row[0] for row in before.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index' AND sql IS NOT NULL").fetchall():
        if name not in kept:  # indexes of later migrations
            conn.execute(f"DROP INDEX {name}")
    for column in (*NODE_FILE_FIELDS, "fields_version"):
        conn.execute(f"ALTER TABLE files DROP COLUMN {column}")
    for column in NODE_SERIES_FIELDS:
        conn.execute(f"ALTER TABLE series DROP COLUMN {column}")
    for column in RUN_FIELDS[4:]:  # the runs' columns of migration 4
        conn.execute(f"ALTER TABLE runs DROP COLUMN {column}")
    conn.execute("DROP TABLE IF EXISTS cluster_run")  # migration 7's
    conn.execute("DROP TABLE IF EXISTS work_items")
    conn.execute("DROP TABLE IF EXISTS run_nodes")  # migration 8's
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")  # migration 9's, then its tables
    conn.execute("DROP TABLE IF EXISTS series_words")
    conn.execute("DROP TABLE IF EXISTS series_text")
    conn.execute("PRAGMA user_version=2")  # later migrations run again when the index opens
    conn.commit()
    conn.close()


def test_an_older_index_is_completed_by_the_next_incremental_run(tmp_path):
    nas = tmp_path / "nas"
    write_series(nas / "CT", 4, StudyTime="101500", StudyID="7", InstitutionName="Clinique",
                 ReferringPhysicianName="DOE^JANE", BodyPartExamined="CHEST")
    write_series(nas / "MR", 2, SOPClassUID=MR_IMAGE, StudyTime="080000")
    (nas / "notes.txt").write_text("not an image")
    source = CountingSource(str(nas))
    data = tmp_path / "data"
    catalog, status = Catalog(str(data)), IndexStatus(str(data))
    indexer = Indexer(catalog, status, lambda: source, workers=2, parse_processes=0)
    indexer.run()
    as_written_by_version_2(catalog.path)
    old = sqlite3.connect(catalog.path)
    rows_before = old.execute("SELECT path, series_key FROM files ORDER BY path").fetchall()
    series_before = old.execute("SELECT series_key, file_count FROM series ORDER BY 1").fetchall()
    old.close()

    source.read.clear()
    s = indexer.run()
    assert s["phase"] == "done" and s["errors"] == 0
    # every image read again, and only those: the file that is not DICOM has nothing to add
    assert sorted(source.read) == sorted(p for p, _ in rows_before if p != "notes.txt")
    conn = catalog.reader()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert [tuple(r) for r in conn.execute("SELECT path, series_key FROM files ORDER BY path")] == rows_before
    assert [tuple(r) for r in conn.execute("SELECT series_key, file_count FROM series ORDER BY 1")] == series_before
    files = {r["path"]: dict(r) for r in conn.execute("SELECT * FROM files WHERE error IS NULL")}
    assert {(f["SOPClassUID"], f["TransferSyntaxUID"]) for p, f in files.items() if p.startswith("CT/")} == \
        {(CT_IMAGE, ExplicitVRLittleEndian)}
    assert {f["SOPClassUID"] for p, f in files.items() if p.startswith("MR/")} == {MR_IMAGE}
    series = {r["StudyTime"]: dict(r) for r in conn.execute("SELECT * FROM series")}
    assert {k: series["101500"][k] for k in NODE_SERIES_FIELDS} == {
        "StudyTime": "101500", "StudyID": "7", "ReferringPhysicianName": "DOE^JANE", "InstitutionName": "Clinique",
        "BodyPartExamined": "CHEST"}
    assert series["080000"]["InstitutionName"] is None

    source.read.clear()
    assert indexer.run()["files_skipped"] == len(rows_before) and source.read == []
