"""The zip of a share, built with zipstream-ng while it is sent: no temporary file, memory flat.

Entries are *stored*, not deflated: DICOM pixel data hardly compresses, and
stored entries let zipstream-ng compute the archive's exact size from the
sizes in the index, so the download carries a `Content-Length` and browsers
show progress. zipstream-ng adds Zip64 records by itself when sizes or
offsets need them.

Files are read only through `source.open(path)`, so any NAS source (local
folder, SMB) serves. Each file must still be what the index says: when one
has vanished, is shorter or longer, or (when the file object has a
descriptor to ask) has another size or mtime, reading raises `FileChanged`.
The exception leaves the zip unfinished (no central directory), so the
client sees a broken download instead of a zip that looks complete.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import quote

from zipstream import ZipStream

from .errors import FileChanged, NasNotFound, NotFound
from .pathnames import escaped

CHUNK = 512 * 1024  # a typical CT image in one read; larger files in several
MAX_COMPONENT = 80  # characters per file or folder name: far below every file system's limit
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                    *(f"LPT{i}" for i in range(1, 10))}


class Interrupted(Exception):
    """The server is stopping: the download ends now."""


@dataclass(frozen=True, slots=True)
class Member:
    """One file of the zip: where it is on the NAS, what the index knows of it, its name in the zip."""

    path: str
    size: int
    mtime_ns: int
    name: str


# -- names --------------------------------------------------------------------------
def safe_component(text: object, fallback: str) -> str:
    """One file or folder name from any text: letters, digits, `-`, `_` and inner dots only.

    Separators, drive colons, control and format characters all become `_`, so
    the result can never be `..`, absolute or hold a path; leading and trailing
    dots are dropped and Windows' reserved device names get a `_` prefix.
    """
    text = unicodedata.normalize("NFC", "" if text is None else str(text))
    name = "".join(c if c.isalnum() or c in "-." else "_" for c in text)
    name = re.sub(r"[._]*_[._]*|\.{2,}", "_", name).strip("._")  # `a_.._b` → `a_b`: no dot runs
    name = name[:MAX_COMPONENT].rstrip("._")
    if not name:
        name = fallback
    if name.split(".")[0].upper() in WINDOWS_RESERVED:
        name = "_" + name
    return name


def _unique(name: str, taken: set[str], *, keep_ext: bool = True) -> str:
    """`name`, or `name_2.ext`, `name_3.ext`…: unique even on case-insensitive file systems."""
    stem, ext = posixpath.splitext(name) if keep_ext else (name, "")
    candidate, n = name, 1
    while candidate.lower() in taken:
        n += 1
        candidate = f"{stem}_{n}{ext}"
    taken.add(candidate.lower())
    return candidate


def _series_folder(series: Mapping) -> str:
    number = series["SeriesNumber"]
    what = series["SeriesDescription"] or series["Modality"] or "series"
    return safe_component(f"{number}_{what}" if number is not None else what, "series")


def plan_members(series: Sequence[Mapping], files: Callable[[str], Iterable[Mapping]]) -> list[Member]:
    """The zip's entries: one folder per series, its files inside under their own (safe) names.

    `series` are rows of the index in the order of the share; `files(series_key)`
    gives the rows (path, size, mtime_ns) of one series. A share spanning several
    patients or studies puts each study's series under a `<patient>_<date>` folder.
    """
    several_studies = len({(s["PatientID"], s["StudyInstanceUID"]) for s in series}) > 1
    folders: set[str] = set()
    members: list[Member] = []
    for row in series:
        folder = _series_folder(row)
        if several_studies:
            folder = f"{_study_part(row)}/{folder}"
        folder = _unique(folder, folders, keep_ext=False)
        names: set[str] = set()
        for n, f in enumerate(files(row["series_key"]), start=1):
            base = safe_component(escaped(f["path"].rpartition("/")[2]), f"IM{n:05d}")
            members.append(Member(f["path"], f["size"], f["mtime_ns"], f"{folder}/{_unique(base, names)}"))
    return members


def _study_part(series: Mapping) -> str:
    patient = safe_component(series["PatientName"] or series["PatientID"], "patient")
    return f"{patient}_{safe_component(series['StudyDate'], 'nodate')}"


def archive_filename(series: Sequence[Mapping]) -> str:
    """`<patient>_<date>_<series>.zip` from the first series (`<n>_series` when there are several)."""
    first = series[0]
    what = (safe_component(first["SeriesDescription"] or first["Modality"], "series") if len(series) == 1
            else f"{len(series)}_series")
    return f"{_study_part(first)}_{what}.zip"


def content_disposition(filename: str) -> str:
    """An `attachment` header with an ASCII name for old clients and the UTF-8 name for the others."""
    stem = filename[:-4] if filename.lower().endswith(".zip") else filename
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    ascii_name = safe_component(ascii_stem, "series") + ".zip"
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


def indexed_series(catalog, keys: Sequence[str]) -> list:
    """The index rows of the given series, in their order. Raises `NotFound` naming an unknown series."""
    rows = catalog.series_rows(keys)
    for key in keys:
        if key not in rows:
            raise NotFound(f"series {key} is not in the NAS index", "Search again: the NAS may have changed.")
    return [rows[key] for key in keys]


def series_archive(catalog, source, keys: Sequence[str], *, stop: threading.Event | None = None
                   ) -> tuple[ShareArchive, str]:
    """The zip of the given series in folders and its download file name. Raises `NotFound` naming an unknown
    series. (`dicomdir.file_set_archive` makes the DICOMDIR layout.)"""
    series = indexed_series(catalog, keys)
    members = plan_members(series, catalog.series_files)
    return ShareArchive(source, members, stop=stop), archive_filename(series)


# -- the stream ---------------------------------------------------------------------
class ShareArchive:
    """The zip's bytes as an iterable, with `len()` its exact size. Call `close()` when done or abandoned.

    `leading`: (name, bytes) entries made in memory (a DICOMDIR), written before the NAS files.
    """

    def __init__(self, source, members: Sequence[Member], *, stop: threading.Event | None = None,
                 chunk_size: int = CHUNK, leading: Sequence[tuple[str, bytes]] = ()):
        self.source = source
        self.stop = stop or threading.Event()
        self.chunk_size = chunk_size
        self._open: BinaryIO | None = None
        self._zip = ZipStream(sized=True)
        for name, data in leading:
            self._zip.add(data, name)
        for member in members:
            self._zip.add(_Reader(self, member), member.name, size=member.size)
        self._size = len(self._zip)
        self._stream: Iterator[bytes] | None = None

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[bytes]:
        if self._stream is None:
            self._stream = iter(self._zip)
        return self._stream

    def close(self) -> None:
        """Stop the stream and close the NAS file being read, if any (a client went away)."""
        if self._stream is not None:
            self._stream.close()
        fh, self._open = self._open, None
        if fh is not None:
            fh.close()

    def read_member(self, member: Member) -> Iterator[bytes]:
        """The bytes of one file, checked against the index."""
        try:
            fh = self.source.open(member.path)
        except NasNotFound as exc:
            raise FileChanged(f"{escaped(member.path)} is no longer on the NAS") from exc
        self._open = fh
        try:
            has_stat = _check_stat(fh, member)
            remaining = member.size
            while remaining > 0:
                if self.stop.is_set():
                    raise Interrupted("the server is stopping")
                data = fh.read(min(self.chunk_size, remaining))
                if not data:
                    raise FileChanged(f"{escaped(member.path)} is shorter than when it was indexed "
                                      f"({member.size - remaining} of {member.size} bytes)")
                remaining -= len(data)
                yield data
            if has_stat:
                _check_stat(fh, member)  # grown, or changed in place, while it was read
            elif fh.read(1):
                raise FileChanged(f"{escaped(member.path)} is longer than when it was indexed ({member.size} bytes)")
        finally:
            self._open = None
            fh.close()


class _Reader:
    """A member's data for zipstream-ng: the file is opened only when its turn comes."""

    __slots__ = ("archive", "member")

    def __init__(self, archive: ShareArchive, member: Member):
        self.archive, self.member = archive, member

    def __iter__(self) -> Iterator[bytes]:
        return self.archive.read_member(self.member)


def _check_stat(fh: BinaryIO, member: Member) -> bool:
    """Compare size and mtime with the index when the file object has a descriptor (local, mounted).

    Returns False when it has none (SMB): the size is then checked while reading.
    """
    try:
        st = os.fstat(fh.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):
        return False
    if st.st_size != member.size or st.st_mtime_ns != member.mtime_ns:
        raise FileChanged(f"{escaped(member.path)} changed since it was indexed")
    return True
