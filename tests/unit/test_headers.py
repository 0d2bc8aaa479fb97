import os
import re
import shutil
import subprocess

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files
from tests.support.dicom import write_dicom

from orthanc_nas.file_meta import NeedMore, NotDicom
from orthanc_nas.headers import HEAD_SIZE, parse_head, read_record


def file_reader(path, n):
    with open(path, "rb") as fh:
        return fh.read(n)


def get_charset_file(name):
    return next((f for f in get_charset_files() if os.path.basename(f) == name), None)


def record_of(path, size=HEAD_SIZE):
    return read_record(file_reader, str(path), size)


def test_reads_the_index_attributes(tmp_path):
    p = write_dicom(tmp_path / "a.dcm", PatientName="DOE^JOHN", PatientID="P1", SeriesNumber=3,
                    InstanceNumber=7, Modality="MR", StudyDate="20231224", SeriesDescription="T1 SAG")
    r = record_of(p)
    assert r["PatientName"] == "DOE^JOHN" and r["PatientID"] == "P1"
    assert r["SeriesNumber"] == 3 and r["InstanceNumber"] == 7
    assert r["Modality"] == "MR" and r["StudyDate"] == "20231224" and r["SeriesDescription"] == "T1 SAG"


@pytest.mark.parametrize("charset, name", [
    ("ISO_IR 100", "Müller^Jürgen"),
    ("ISO_IR 192", "García Márquez^José Luis"),
    ("ISO_IR 144", "Иванов^Иван"),
    ("ISO_IR 126", "Παπαδόπουλος^Γιώργος"),
])
def test_names_are_decoded_with_the_files_character_set(tmp_path, charset, name):
    p = write_dicom(tmp_path / "a.dcm", charset=charset, PatientName=name, StudyDescription=name.split("^")[0])
    raw = p.read_bytes()
    assert name.split("^")[0].encode("utf-8") not in raw or charset == "ISO_IR 192"  # really encoded
    r = record_of(p)
    assert r["PatientName"] == name and r["StudyDescription"] == name.split("^")[0]


@pytest.mark.parametrize("name", ["chrH31.dcm", "chrX1.dcm", "chrKoreanMulti.dcm", "chrJapMulti.dcm",
                                  "chrRuss.dcm", "chrGreek.dcm", "chrFren.dcm", "chrArab.dcm", "chrHbrw.dcm"])
def test_names_in_real_files_of_many_character_sets(name):
    """pydicom's own files in ISO 2022 (Japanese, Korean), Cyrillic, Greek, Arabic, Hebrew..."""
    path = get_charset_file(name)
    expected = pydicom.dcmread(path)
    record = record_of(path)
    assert record["PatientName"] == str(expected.PatientName)
    assert any(ord(c) > 127 for c in record["PatientName"])


def test_long_header_needs_more_bytes(tmp_path):
    p = write_dicom(tmp_path / "long.dcm", StudyDescription="X" * 60000, PatientName="LONG^HEADER")
    head = p.read_bytes()[:HEAD_SIZE]
    assert isinstance(parse_head(head, complete=False), NeedMore)
    assert record_of(p)["PatientName"] == "LONG^HEADER"


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (b"hello, this is a text file\n" * 20, "not a DICOM file"),
    (b"<!DOCTYPE html><html><body>Login</body></html>", "not a DICOM file"),
    (b"\0" * 128 + b"DICM", "DICOM"),
])
def test_non_dicom_is_refused_with_a_reason(tmp_path, content, reason):
    p = tmp_path / "x.dcm"
    p.write_bytes(content)
    with pytest.raises(NotDicom, match=reason):
        record_of(p)


def test_truncated_header_is_an_error(tmp_path):
    p = write_dicom(tmp_path / "a.dcm")
    data = p.read_bytes()
    cut = data.index(b"DOE^JOHN") - 6  # in the middle of the PatientName element
    p.write_bytes(data[:cut])
    with pytest.raises(NotDicom):
        record_of(p)


@pytest.mark.parametrize("where, reason", [
    (lambda d, px: px + 8, r"in an element header"),  # (7FE0,0010) OB, without its 4-byte length
    (lambda d, px: px + 10, r"in an element header"),
    (lambda d, px: px + 4, r"4 bytes of an element header"),
    (lambda d, px: len(d) - 1, r"\(7FE0,0010\) at byte \d+ claims"),  # Pixel Data's value
    (lambda d, px: px - 1, r"claims|bytes of an element header"),  # the element before Pixel Data
])
def test_a_whole_file_cut_after_the_attributes_is_truncated(tmp_path, where, reason):
    p = write_dicom(tmp_path / "a.dcm")
    data = p.read_bytes()
    px = data.index(b"\xe0\x7f\x10\x00O")
    p.write_bytes(data[:where(data, px)])
    with pytest.raises(NotDicom, match=r"^truncated DICOM file: .*" + reason):
        record_of(p)
    p.write_bytes(data)
    assert record_of(p)["SOPInstanceUID"]  # whole, it is read


@pytest.mark.parametrize("padding", [1, 2, 7, 12])
def test_bytes_after_pixel_data_are_not_a_cut(tmp_path, padding):
    p = write_dicom(tmp_path / "a.dcm")
    p.write_bytes(p.read_bytes() + b"\0" * padding)  # a writer's padding: pydicom reads the file too
    assert record_of(p)["SOPInstanceUID"]


def test_every_bundled_pydicom_file_is_read_or_refused_with_a_reason():
    outcomes = {"ok": 0, "refused": 0}
    for path in get_testdata_files():
        if not os.path.isfile(path):
            continue
        try:
            record_of(path, 1024)  # a small first read forces the "read more" path often
            outcomes["ok"] += 1
        except NotDicom as exc:
            assert str(exc)
            outcomes["refused"] += 1
    assert outcomes["ok"] > 100 and outcomes["refused"] > 5


DCMDUMP = shutil.which("dcmdump")


@pytest.mark.skipif(DCMDUMP is None, reason="dcmtk's dcmdump is not installed")
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "liver_1frame.dcm",
                                  "ExplVR_BigEnd.dcm", "MR_small_implicit.dcm", "SC_rgb_rle.dcm", "rtdose.dcm",
                                  "chrGerm.dcm", "reportsi.dcm"])
def test_attributes_agree_with_dcmdump(name):
    """An independent parser (dcmtk) reads the same values."""
    path = get_testdata_file(name) or get_charset_file(name)
    out = subprocess.run([DCMDUMP, "-M", path], capture_output=True, check=True).stdout.decode("latin-1")
    dumped = {}
    for line in out.splitlines():  # top-level elements only: nested ones are indented
        m = re.match(r"\((\w{4}),(\w{4})\) \w\w (?:\[(.*?)\]|(\S+))", line)
        if m:
            dumped[(m.group(1) + m.group(2)).upper()] = m.group(3) if m.group(3) is not None else m.group(4)
    record = record_of(path)
    for tag, keyword in [("00100020", "PatientID"), ("0020000E", "SeriesInstanceUID"),
                         ("0020000D", "StudyInstanceUID"), ("00080060", "Modality"), ("00080020", "StudyDate"),
                         ("00080018", "SOPInstanceUID")]:
        if tag in dumped and not dumped[tag].startswith("(no"):
            expected = dumped[tag].strip()
            if keyword == "StudyDate":  # the form YYYY.MM.DD before DICOM 3.0 is stored as YYYYMMDD
                expected = expected.replace(".", "")
            assert record[keyword] == expected, keyword
    if "00200011" in dumped:
        assert record["SeriesNumber"] == int(dumped["00200011"])


@pytest.mark.parametrize("raw, expected", [
    ("Müller^Jürgen".encode(), "Müller^Jürgen"),  # undeclared UTF-8, common in exports
    ("Müller^Jürgen".encode("latin-1"), "Müller^Jürgen"),  # undeclared Latin-1
    (b"DOE^JOHN", "DOE^JOHN"),
])
def test_names_without_a_declared_character_set(tmp_path, raw, expected):
    p = write_dicom(tmp_path / "a.dcm", PatientName="PLACEHOLDER^NAME")
    data = p.read_bytes()
    # swap the value in place (explicit VR: 2-byte length before the value)
    at = data.index(b"PLACEHOLDER^NAME")
    value = raw + (b" " if len(raw) % 2 else b"")
    data = data[:at - 2] + len(value).to_bytes(2, "little") + value + data[at + len(b"PLACEHOLDER^NAME"):]
    p.write_bytes(data)
    assert record_of(p)["PatientName"] == expected


def test_the_file_meta_walk_finds_the_data_set_and_its_transfer_syntax(tmp_path):
    from orthanc_nas.file_meta import FileMeta, read_file_meta, transfer_syntax

    path = write_dicom(tmp_path / "a.dcm", PatientID="P1")
    data = path.read_bytes()
    meta = read_file_meta(data, complete=True)
    assert isinstance(meta, FileMeta) and meta.syntax == transfer_syntax(meta.uid.encode()) and not meta.notes
    assert data[meta.end:meta.end + 2] == b"\x08\x00"  # the data set starts with group 0008
    assert read_file_meta(data[:140], complete=False) == NeedMore(280)
    with pytest.raises(NotDicom, match="within its File Meta Information"):
        read_file_meta(data[:140], complete=True)
