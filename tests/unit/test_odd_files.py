"""Odd files from real archives: each indexed with the values the standard gives it, never a failed run."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import pytest
from tests.support import odd_files
from tests.support.dicom import PIXEL_DATA_OB, write_dicom, write_series

from orthanc_nas import cli
from orthanc_nas.archive import series_archive
from orthanc_nas.catalog import Catalog
from orthanc_nas.catalog_writer import CatalogWriter, sqlite_value
from orthanc_nas.dicomdir import file_set_archive
from orthanc_nas.file_meta import NotDicom
from orthanc_nas.headers import parse_head, read_record
from orthanc_nas.indexer import Indexer
from orthanc_nas.pathnames import MARK, escaped, loaded, stored
from orthanc_nas.search import series_detail
from orthanc_nas.sources import FileEntry
from orthanc_nas.sources.local import LocalSource
from orthanc_nas.status import IndexStatus, write_json_atomic
from orthanc_nas.store_dialects import path_text

LATIN1_SHOWN = "K\\xf6ln/M\\xfcller.dcm"


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("odd")
    odd_files.write_all(root)
    return root


def index(tmp_path, root, full=False, processes=0, data=None):
    data = data or tmp_path / "data"
    catalog, status = Catalog(str(data)), IndexStatus(str(data))
    source = LocalSource(str(root))
    result = Indexer(catalog, status, lambda: source, workers=4, parse_processes=processes).run(full=full)
    return result, catalog


def series_of(catalog, patient_id):
    conn = catalog.reader()
    return [dict(r) for r in conn.execute("SELECT * FROM series WHERE PatientID=? ORDER BY SeriesNumber", (patient_id,))]


def check_expected(catalog, patients):
    for patient, values, count in odd_files.EXPECTED:
        if patient not in patients:
            continue
        matching = [s for s in series_of(catalog, patient) if all(s[k] == v for k, v in values.items())]
        assert len(matching) == 1, (patient, values, series_of(catalog, patient))
        assert matching[0]["file_count"] == count, (patient, values)


def reader(path, n):
    with open(path, "rb") as fh:
        return fh.read(n)


# -- each case, indexed --------------------------------------------------------------------------------
@pytest.mark.parametrize("case, patients", [
    ("case1", {"P1A", "P1B", "P1C"}),
    ("case2", {"P2A", "P2B"}),
    ("case3", {"P3"}),
    ("case4", {"P41", "P42", "P43"}),
    ("case11", {"P11A", "P11B"}),
    ("case12", {"P12"}),
])
def test_each_case_is_indexed_with_its_right_values(tmp_path, cases, case, patients):
    s, catalog = index(tmp_path, cases / case)
    assert s["phase"] == "done" and s["errors"] == 0, s["error_samples"]
    check_expected(catalog, patients)
    again, _ = index(tmp_path, cases / case)
    assert again["phase"] == "done" and again["files_skipped"] == again["files_processed"]


def test_an_integer_string_beyond_64_bits_is_absent_and_its_neighbour_indexed(cases):
    huge = read_record(reader, str(cases / "case1" / "a" / "IM1.dcm"))
    assert huge["SeriesNumber"] is None and huge["PatientName"] == "HUGE^SERIESNUMBER"
    assert read_record(reader, str(cases / "case1" / "c" / "IM1.dcm"))["InstanceNumber"] is None


def test_a_deflated_file_over_64_mib_is_read_from_its_start(cases):
    path = cases / "case11" / "big.dcm"
    assert path.stat().st_size > 64 * 2**20
    reads = []

    def counting(p, n):
        reads.append(n)
        return reader(p, n)

    record = read_record(counting, str(path))
    assert record["PatientName"] == "DEFLATE^BERTA" and record["SeriesDescription"] == "LARGE MULTIFRAME"
    assert max(reads) <= 64 * 1024


def test_writer_mistakes_are_a_debug_line_not_an_error(tmp_path, cases, caplog):
    with caplog.at_level(logging.DEBUG, logger="orthanc_nas"):
        s, _ = index(tmp_path, cases / "case3")
        s4, _ = index(tmp_path / "4", cases / "case4")
    assert s["errors"] == 0 and s4["errors"] == 0
    lines = [r for r in caplog.records if "writer's mistake" in r.getMessage()]
    assert {r.levelno for r in lines} == {logging.DEBUG}
    text = " ".join(r.getMessage() for r in lines)
    assert "Group Length" in text and "NUL" in text


# -- names that are not UTF-8 ----------------------------------------------------------------------------
def test_a_latin1_name_is_kept_to_be_read_again_and_shown_escaped(tmp_path, cases, db_engine):
    s, catalog = index(tmp_path, cases / "case2")
    assert s["phase"] == "done" and s["errors"] == 0
    key = series_of(catalog, "P2B")[0]["series_key"]
    assert series_detail(catalog.reader(), key)["files"][0]["path"] == LATIN1_SHOWN
    files = catalog.series_files(key)
    raw = os.fsencode(files[0]["path"])
    assert raw == odd_files.LATIN1_FOLDER + b"/" + odd_files.LATIN1_FILE

    archive, _ = series_archive(catalog, LocalSource(str(cases / "case2")), [key])
    zipped = zipfile.ZipFile(io.BytesIO(b"".join(archive)))
    (name,) = zipped.namelist()
    assert name.endswith("M_xfcller.dcm")
    original = (os.fsencode(cases / "case2") + b"/" + raw)
    with open(original, "rb") as fh:
        assert zipped.read(name) == fh.read()
        fh.seek(0)
        archive, _ = file_set_archive(catalog, LocalSource(str(cases / "case2")), [key])  # the DICOMDIR layout
        zipped = zipfile.ZipFile(io.BytesIO(b"".join(archive)))
        (name,) = [n for n in zipped.namelist() if n != "DICOMDIR"]
        assert zipped.read(name) == fh.read()


def test_path_values_round_trip():
    latin1 = os.fsdecode(b"K\xf6ln/M\xfcller.dcm")
    assert stored("a/b.dcm") == "a/b.dcm" and stored(latin1) == b"K\xf6ln/M\xfcller.dcm"
    assert loaded(stored(latin1)) == latin1 and loaded("a") == "a"
    # PostgreSQL's text form: exact for every name, also one holding the escape character itself
    for name in (latin1, f"x{MARK}y", os.fsdecode(b"\xff" + MARK.encode() + b"\xe0\x80"), "Müller"):
        raw = stored(name)
        text = path_text(raw) if isinstance(raw, bytes) else raw
        assert text.encode("utf-8") and loaded(text) == name
    assert path_text(stored(latin1)).startswith("K")  # the UTF-8 part as it is: folder prefixes still match
    assert escaped(latin1) == LATIN1_SHOWN and escaped("Müller") == "Müller"
    assert escaped("x\ud800") == "x\\ud800"


def test_status_file_and_cli_take_a_latin1_name(tmp_path, capsys):
    root = tmp_path / "nas"
    write_series(root / "ok", 2)
    folder = os.fsencode(root) + b"/K\xf6ln"
    os.makedirs(folder)
    with open(folder + b"/notes.txt", "wb") as fh:
        fh.write(b"not an image")
    data = tmp_path / "data"
    assert cli.main(["index", str(root), "--data", str(data), "--quiet", "--processes", "0"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["errors"] == 1 and printed["error_samples"][0]["path"] == "K\\xf6ln/notes.txt"
    saved = json.loads((data / "index_status.json").read_text(encoding="utf-8"))
    assert saved["phase"] == "done" and saved["error_samples"] == printed["error_samples"]
    assert sorted(os.listdir(data)) == ["index.db", "index_status.json"]  # no temporary file left


def test_a_status_write_that_fails_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "index_status.json"
    with pytest.raises(TypeError):
        write_json_atomic(str(target), {"x": object()})
    assert os.listdir(tmp_path) == []
    write_json_atomic(str(target), {"path": os.fsdecode(b"K\xf6ln")})  # a name that slipped through unescaped
    assert json.loads(target.read_text(encoding="utf-8")) == {"path": "K\udcf6ln"}


# -- no record can fail its batch ------------------------------------------------------------------------
def record(i, **kw):
    values = {"PatientName": "DOE^JOHN", "PatientID": "P1", "StudyInstanceUID": "9.9", "SeriesInstanceUID": "1.2",
              "SeriesNumber": 1, "InstanceNumber": i, "SOPInstanceUID": f"1.2.{i}", "Modality": "CT",
              "StudyDate": "20240101"}
    return {**values, **kw}


def test_values_sqlite_would_refuse_are_made_safe(tmp_path):
    writer = CatalogWriter(Catalog(str(tmp_path)))
    writer.begin_run()
    refused = writer.write([
        (FileEntry("a.dcm", 1, 1), record(1, SeriesNumber=10**30, InstanceNumber=-(2**70)), None),
        (FileEntry("b.dcm", 1, 1), record(2, SeriesInstanceUID="1.3", PatientName="A\0B\udcf6", StudyDate=float("nan")), None),
    ])
    assert refused == []
    rows = writer.conn.execute("SELECT SeriesNumber, PatientName, StudyDate FROM series ORDER BY 1").fetchall()
    assert rows == [(None, "DOE^JOHN", "20240101"), (1, "AB\\xf6", None)]
    assert writer.conn.execute("SELECT InstanceNumber FROM files WHERE path='a.dcm'").fetchone() == (None,)
    assert sqlite_value(2**63) is None and sqlite_value(2**63 - 1) == 2**63 - 1 and sqlite_value(True) is True


def test_a_record_sqlite_refuses_is_an_error_and_the_rest_of_its_batch_is_written(tmp_path, db_engine):
    writer = CatalogWriter(Catalog(str(tmp_path)))
    writer.begin_run()
    unstorable = FileEntry("bad\ud800.dcm", 1, 1)  # a lone surrogate no file system gives, nor SQLite takes
    refused = writer.write([(FileEntry("a.dcm", 1, 1), record(1), None), (unstorable, record(2), None),
                            (FileEntry("c.dcm", 1, 1), record(3), None)])
    assert [path for path, _ in refused] == [unstorable.path] and "UnicodeEncodeError" in refused[0][1]
    paths = [r[0] for r in writer.conn.execute("SELECT path FROM files ORDER BY path")]
    assert paths == ["a.dcm", "c.dcm"]
    assert writer.conn.execute("SELECT file_count FROM series").fetchone()[0] == 2


def test_a_refused_record_is_counted_in_errors(tmp_path, monkeypatch):
    root = tmp_path / "nas"
    write_series(root / "s", 3)
    original = CatalogWriter._store

    def refusing(self, results):  # SQLite refusing one record's value, whatever the reason
        if any(entry.path.endswith("00002.dcm") and record for entry, record, _ in results):
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return original(self, results)

    monkeypatch.setattr(CatalogWriter, "_store", refusing)
    s, catalog = index(tmp_path, root)
    assert s["phase"] == "done" and s["errors"] == 1
    assert "OverflowError" in s["error_samples"][0]["error"]
    assert catalog.reader().execute("SELECT file_count FROM series").fetchone()[0] == 2
    errors = catalog.reader().execute("SELECT path, error FROM files WHERE error IS NOT NULL").fetchall()
    assert [e[0] for e in errors] == ["s/IM00002.dcm"]


# -- true reasons ----------------------------------------------------------------------------------------
def test_a_truncated_file_is_named_truncated(tmp_path):
    p = write_dicom(tmp_path / "a.dcm", StudyDescription="X" * 200)
    data = p.read_bytes()
    with pytest.raises(NotDicom, match="truncated"):
        parse_head(data[:data.index(b"X" * 200) + 50], complete=True)
    with pytest.raises(NotDicom, match="not a DICOM file"):
        parse_head(b"PK\3\4" + bytes(400), complete=True)


def test_a_file_ending_cleanly_before_group_0028_is_indexed(tmp_path):
    p = write_dicom(tmp_path / "a.dcm", PatientName="SHORT^SAM")
    data = p.read_bytes()
    end = data.index(PIXEL_DATA_OB)  # the first element after group 0020
    record = parse_head(data[:end], complete=True)
    assert record["PatientName"] == "SHORT^SAM"


def test_a_run_over_every_case_mixed_ends_done_twice(tmp_path, cases):
    root = tmp_path / "mixed"
    shutil.copytree(cases, root, copy_function=os.link)  # hard links: the 70 MiB file costs nothing
    write_series(root / "ordinary" / "1", 3, PatientName="ORDINARY^ONE", PatientID="ORD1")
    p = write_dicom(root / "ordinary" / "cut.dcm", PatientID="CUT")
    p.write_bytes(p.read_bytes()[:300])
    (root / "ordinary" / "readme.txt").write_text("no image")
    s, catalog = index(tmp_path, root, processes=2)
    assert s["phase"] == "done", s.get("failure")
    assert s["errors"] == 2 and {e["path"] for e in s["error_samples"]} == {"ordinary/cut.dcm", "ordinary/readme.txt"}
    assert all("truncated" in e["error"] or "not a DICOM" in e["error"] for e in s["error_samples"])
    check_expected(catalog, {p for p, _, _ in odd_files.EXPECTED})
    assert series_of(catalog, "ORD1")[0]["file_count"] == 3
    again, _ = index(tmp_path, root, processes=2)
    assert again["phase"] == "done" and again["files_skipped"] == again["files_processed"] == s["files_processed"]
    full, _ = index(tmp_path, root, full=True)
    assert full["phase"] == "done" and full["errors"] == 2


def test_dates_stored_by_an_older_version_are_made_dates(tmp_path):
    from orthanc_nas.catalog import connect, migrate
    from orthanc_nas.catalog_migrations import MIGRATIONS

    conn = connect(str(tmp_path / "index.db"))
    migrate(conn, MIGRATIONS[:2])
    conn.executemany("INSERT INTO series(series_key, StudyDate, PatientBirthDate) VALUES (?,?,?)",
                     [("a", "2024.01.02", "19700101"), ("b", "20240230", None), ("c", "20231231", "1970-01-01")])
    migrate(conn)
    rows = conn.execute("SELECT series_key FROM series ORDER BY StudyDate DESC").fetchall()
    assert [r[0] for r in rows] == ["a", "c", "b"]
    assert dict(conn.execute("SELECT series_key, PatientBirthDate FROM series").fetchall()) == {
        "a": "19700101", "b": None, "c": None}


def test_the_usual_files_take_the_fast_path(tmp_path, cases, monkeypatch):
    """pydicom's read_partial only for what the fast path is not sure of: the usual files, a wrong meta
    group length and deflated files never go through it."""
    import orthanc_nas.headers as headers

    def unexpected(*args, **kw):
        raise AssertionError("read_partial used")

    monkeypatch.setattr(headers, "read_partial", unexpected)
    for path in [write_dicom(tmp_path / "a.dcm"), cases / "case3" / "IM1.dcm", cases / "case3" / "IM2.dcm",
                 cases / "case11" / "small.dcm"]:
        assert read_record(reader, str(path))["PatientName"]
    no_meta = tmp_path / "no-meta.dcm"
    no_meta.write_bytes(write_dicom(tmp_path / "b.dcm").read_bytes()[128:])  # no preamble: pydicom's reader
    with pytest.raises(NotDicom, match="read_partial used"):
        read_record(reader, str(no_meta))


def test_files_indexed_before_values_were_read_by_vr_are_read_again(tmp_path, cases):
    """An index written before (fields version 2: SeriesNumber `1.5` cut to 1) is corrected by the next run."""
    s, catalog = index(tmp_path, cases / "case12")
    conn = catalog.reader()
    conn.execute("UPDATE files SET fields_version=2")
    conn.execute("UPDATE series SET SeriesNumber=1 WHERE SeriesNumber IS NULL")
    again, catalog = index(tmp_path, cases / "case12")
    assert again["files_skipped"] == 0 and again["phase"] == "done"
    check_expected(catalog, {"P12"})
