"""A batch the index refuses a value of: the other files kept, the refused one counted (`CatalogWriter.write`)."""

import pytest
from tests.support.series import record

from orthanc_nas.catalog import Catalog
from orthanc_nas.catalog_writer import CatalogWriter
from orthanc_nas.sources import FileEntry

UID = "1.2.826.0.1.3680043.2.1125.77"


@pytest.fixture(autouse=True)
def engine(db_engine):
    """Every test of this module on SQLite and on PostgreSQL (see tests/conftest.py)."""
    return db_engine


def entry(path: str) -> FileEntry:
    return FileEntry(path, 1000, 1)


def test_a_refused_value_loses_only_its_file_and_keeps_the_batchs_other_work(tmp_path):
    catalog = Catalog(str(tmp_path))
    writer = CatalogWriter(catalog)
    writer.begin_run()
    series = dict(PatientName="DOE^JOHN", StudyInstanceUID=f"{UID}.1", SeriesInstanceUID=f"{UID}.1.1")
    writer.write([(entry("old.dcm"), record(**series, SOPInstanceUID=f"{UID}.9.0", InstanceNumber=1), None)])
    writer.begin_run()  # the next run: old.dcm could not be read this time, so it is only marked seen
    refused = writer.write([
        (entry("a.dcm"), record(**series, SOPInstanceUID=f"{UID}.9.1", InstanceNumber=2), None),
        # a name no file system gives (a lone surrogate): its record is refused (UnicodeEncodeError)
        (entry("bad\ud800.dcm"), record(**series, SOPInstanceUID=f"{UID}.9.2", InstanceNumber=4), None),
        (entry("b.dcm"), record(**series, SOPInstanceUID=f"{UID}.9.3", InstanceNumber=3), None),
    ], unread=["old.dcm"])
    assert [path for path, _ in refused] == ["bad\ud800.dcm"] and "refused a value" in refused[0][1]
    conn = catalog.reader()
    rows = {row[0]: row[1:] for row in conn.execute("SELECT path, series_key IS NOT NULL, error IS NOT NULL, "
                                                    "seen_run FROM files")}
    run = writer.run_id
    # the batch's other files and the unread one's mark kept; the refused one has not even a path to keep
    assert rows == {"old.dcm": (True, False, run), "a.dcm": (True, False, run), "b.dcm": (True, False, run)}
    assert conn.execute("SELECT file_count FROM series").fetchall()[0][0] == 3
    writer.close()
