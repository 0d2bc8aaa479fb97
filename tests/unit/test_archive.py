"""The zip of a share: validity, size known in advance, names, Zip64, and breaking off on changed files."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest
import zipstream.ng

from orthanc_nas.archive import (
    Interrupted,
    Member,
    ShareArchive,
    archive_filename,
    content_disposition,
    plan_members,
    safe_component,
)
from orthanc_nas.errors import FileChanged
from orthanc_nas.sources.local import LocalSource


def nas_files(root: Path, sizes: dict[str, int]) -> list[Member]:
    """Files of random bytes under `root`; members named as their path, as the index would know them."""
    members = []
    for path, size in sizes.items():
        full = root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_bytes(os.urandom(size))
        st = full.stat()
        members.append(Member(path, st.st_size, st.st_mtime_ns, f"s/{path.replace('/', '_')}"))
    return members


class TrackingSource(LocalSource):
    """A local source that remembers the file objects it handed out."""

    def __init__(self, root):
        super().__init__(str(root))
        self.opened = []

    def open(self, path):
        fh = super().open(path)
        self.opened.append(fh)
        return fh


class OpenOnlySource:
    """A source offering nothing but `open` with file objects without a descriptor (as SMB's)."""

    def __init__(self, root: Path):
        self.root = root

    def open(self, path):
        return io.BytesIO((self.root / path).read_bytes())


def series_row(key: str, **fields) -> dict:
    row = {"series_key": key, "PatientName": "DOE^JANE", "PatientID": "P1", "StudyInstanceUID": "1.2",
           "StudyDate": "20240102", "SeriesNumber": 3, "SeriesDescription": "AX T2", "Modality": "MR"}
    row.update(fields)
    return row


# -- the stream --------------------------------------------------------------------------------
def test_zip_is_valid_stored_and_exactly_as_long_as_announced(tmp_path):
    members = nas_files(tmp_path, {"a/1.dcm": 300_000, "a/2.dcm": 0, "b/3.dcm": 12_345})
    archive = ShareArchive(LocalSource(str(tmp_path)), members, chunk_size=64 * 1024)
    data = b"".join(archive)
    assert len(data) == len(archive)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert zf.namelist() == [m.name for m in members]
        for info, member in zip(zf.infolist(), members, strict=True):
            assert info.compress_type == zipfile.ZIP_STORED
            assert zf.read(info) == (tmp_path / member.path).read_bytes()
    assert b"PK\x06\x06" not in data[-200:]  # small: no Zip64 end record


def test_zip64_records_when_sizes_pass_the_limit(tmp_path, monkeypatch):
    # Lowering zipstream-ng's limit exercises the same code paths as a 4 GiB series, in a blink.
    monkeypatch.setattr(zipstream.ng, "ZIP64_LIMIT", 50_000)
    members = nas_files(tmp_path, {"1.dcm": 40_000, "2.dcm": 60_000, "3.dcm": 30_000})
    archive = ShareArchive(LocalSource(str(tmp_path)), members)
    data = b"".join(archive)
    assert len(data) == len(archive)
    assert b"PK\x06\x06" in data[-200:] and b"PK\x06\x07" in data[-200:]  # Zip64 end record and locator
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        assert [zf.read(m.name) for m in members] == [(tmp_path / m.path).read_bytes() for m in members]


def test_source_without_descriptor_is_enough(tmp_path):
    members = nas_files(tmp_path, {"x/1.dcm": 5000, "x/2.dcm": 7000})
    data = b"".join(ShareArchive(OpenOnlySource(tmp_path), members))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.read(members[1].name) == (tmp_path / "x/2.dcm").read_bytes()
    (tmp_path / "x/2.dcm").write_bytes(b"short")  # the size is still checked while reading
    with pytest.raises(FileChanged, match="shorter"):
        b"".join(ShareArchive(OpenOnlySource(tmp_path), members))
    (tmp_path / "x/2.dcm").write_bytes(os.urandom(7001))
    with pytest.raises(FileChanged, match="longer"):
        b"".join(ShareArchive(OpenOnlySource(tmp_path), members))


def _consume(archive: ShareArchive) -> bytes:
    """Read until the stream breaks; return what the client got, re-raising the cause."""
    got = bytearray()
    try:
        for chunk in archive:
            got += chunk
    except BaseException as exc:
        exc.received = bytes(got)
        raise
    return bytes(got)


@pytest.mark.parametrize("change, message", [
    (lambda p: p.unlink(), "no longer on the NAS"),
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "changed since"),
    (lambda p: p.write_bytes(p.read_bytes() + b"more"), "changed since"),
    (lambda p: os.utime(p, ns=(1, 1)), "changed since"),
])
def test_a_file_changed_since_indexing_breaks_the_zip_off(tmp_path, change, message):
    members = nas_files(tmp_path, {"1.dcm": 10_000, "2.dcm": 10_000, "3.dcm": 10_000})
    change(tmp_path / "2.dcm")
    archive = ShareArchive(LocalSource(str(tmp_path)), members)
    with pytest.raises(FileChanged, match=message) as raised:
        _consume(archive)
    received = raised.value.received
    assert len(received) < len(archive)
    assert b"PK\x01\x02" not in received and b"PK\x05\x06" not in received  # no central directory


def test_a_file_rewritten_while_it_is_read_breaks_the_zip_off(tmp_path):
    members = nas_files(tmp_path, {"1.dcm": 100_000})
    archive = ShareArchive(LocalSource(str(tmp_path)), members, chunk_size=10_000)
    stream = iter(archive)
    next(stream), next(stream)  # local header, first chunk
    os.utime(tmp_path / "1.dcm", ns=(1, 1))
    with pytest.raises(FileChanged, match="changed since"):
        for _ in stream:
            pass


def test_close_mid_stream_closes_the_nas_file(tmp_path):
    members = nas_files(tmp_path, {"1.dcm": 100_000, "2.dcm": 100})
    source = TrackingSource(tmp_path)
    archive = ShareArchive(source, members, chunk_size=10_000)
    stream = iter(archive)
    next(stream), next(stream)
    assert len(source.opened) == 1 and not source.opened[0].closed
    archive.close()
    assert source.opened[0].closed


def test_stop_event_interrupts(tmp_path):
    members = nas_files(tmp_path, {"1.dcm": 100_000})
    archive = ShareArchive(LocalSource(str(tmp_path)), members, chunk_size=10_000)
    stream = iter(archive)
    next(stream), next(stream)
    archive.stop.set()
    with pytest.raises(Interrupted):
        next(stream)


# -- names -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("DOE^JOHN", "DOE_JOHN"), ("Müller^Jürgen", "Müller_Jürgen"), ("IM00001.dcm", "IM00001.dcm"),
    ("..", "F"), ("../../etc/passwd", "etc_passwd"), ("C:\\Windows\\x.dcm", "C_Windows_x.dcm"),
    ("/abs/path", "abs_path"), ("a\x00b\u202ec", "a_b_c"), ("CON", "_CON"), ("lpt1.dcm", "_lpt1.dcm"),
    ("  ", "F"), (None, "F"), ("x. ", "x"), ("a..b", "a_b"), ("1_.._.._x", "1_x"), (3, "3"),
])
def test_safe_component(text, expected):
    assert safe_component(text, "F") == expected


def test_safe_component_is_bounded():
    assert len(safe_component("x" * 1000, "F")) <= 80


def test_entry_names_are_safe_and_unique(tmp_path):
    files = {"s1": [{"path": p, "size": 1, "mtime_ns": 1} for p in
                    ["d/IM1.dcm", "e/IM1.dcm", "d/im1.dcm", "d/..", "d/a\\b.dcm", "d/.hidden", "d/IM1_2.dcm"]],
             "s2": [{"path": "z/IM1.dcm", "size": 1, "mtime_ns": 1}]}
    series = [series_row("s1", SeriesDescription="../..\\evil"), series_row("s2", SeriesDescription="..\\evil")]
    names = [m.name for m in plan_members(series, files.__getitem__)]
    assert names == ["3_evil/IM1.dcm", "3_evil/IM1_2.dcm", "3_evil/im1_3.dcm", "3_evil/IM00004",
                     "3_evil/a_b.dcm", "3_evil/hidden", "3_evil/IM1_2_2.dcm", "3_evil_2/IM1.dcm"]
    assert len({n.lower() for n in names}) == len(names)


def test_series_of_several_studies_get_a_study_folder():
    series = [series_row("s1"), series_row("s2", StudyInstanceUID="9.9", PatientName="ROE^RICHARD",
                                           StudyDate="20230505", SeriesNumber=None, SeriesDescription="")]
    members = plan_members(series, lambda key: [{"path": f"{key}/f", "size": 1, "mtime_ns": 1}])
    assert [m.name for m in members] == ["DOE_JANE_20240102/3_AX_T2/f", "ROE_RICHARD_20230505/MR/f"]


def test_archive_filename_and_content_disposition():
    assert archive_filename([series_row("s1")]) == "DOE_JANE_20240102_AX_T2.zip"
    assert archive_filename([series_row("s1"), series_row("s2")]) == "DOE_JANE_20240102_2_series.zip"
    hostile = series_row("s", PatientName='"; filename=evil.exe\r\nX: y', StudyDate=None,
                         SeriesDescription="Ünïcode ß")
    name = archive_filename([hostile])
    assert name == "filename_evil.exe_X_y_nodate_Ünïcode_ß.zip"
    header = content_disposition(name)
    assert header == ("attachment; filename=\"filename_evil.exe_X_y_nodate_Unicode.zip\"; "
                      "filename*=UTF-8''filename_evil.exe_X_y_nodate_%C3%9Cn%C3%AFcode_%C3%9F.zip")
    header.encode("latin-1")  # what waitress sends
