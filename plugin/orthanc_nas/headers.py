"""Reading the few DICOM attributes the index needs from the start of a file.

pydicom does the parsing (`read_partial`, the function behind
`dcmread(stop_before_pixels=True)`), with a `stop_when` that ends the parse
once group 0020's InstanceNumber is passed, so neither the rest of the
header nor the pixels are read. The caller hands over a prefix of the file;
pydicom parses a truncated buffer silently, so `parse_head` tells whether the
prefix reached the stop point and asks for more bytes when it did not.
"""

from __future__ import annotations

import functools
import io
from dataclasses import dataclass

from pydicom.charset import convert_encodings
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_partial
from pydicom.tag import Tag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.valuerep import PersonName
from pydicom.values import convert_PN, convert_text

#: bytes read first; enough for most headers (measured: 2–10 KB), doubled while a header is longer
HEAD_SIZE = 16 * 1024
MAX_HEAD_SIZE = 64 * 1024 * 1024

# keyword -> (tag, how to decode)
_TEXT, _NAME, _ASCII, _INT = "text", "name", "ascii", "int"
FIELDS: dict[str, tuple[int, str]] = {
    "SpecificCharacterSet": (0x00080005, _ASCII),
    "SOPClassUID": (0x00080016, _ASCII),
    "SOPInstanceUID": (0x00080018, _ASCII),
    "StudyDate": (0x00080020, _ASCII),
    "StudyTime": (0x00080030, _ASCII),
    "AccessionNumber": (0x00080050, _TEXT),
    "Modality": (0x00080060, _ASCII),
    "InstitutionName": (0x00080080, _TEXT),
    "ReferringPhysicianName": (0x00080090, _NAME),
    "StudyDescription": (0x00081030, _TEXT),
    "SeriesDescription": (0x0008103E, _TEXT),
    "PatientName": (0x00100010, _NAME),
    "PatientID": (0x00100020, _TEXT),
    "PatientBirthDate": (0x00100030, _ASCII),
    "PatientSex": (0x00100040, _ASCII),
    "BodyPartExamined": (0x00180015, _ASCII),
    "StudyInstanceUID": (0x0020000D, _ASCII),
    "SeriesInstanceUID": (0x0020000E, _ASCII),
    "StudyID": (0x00200010, _TEXT),
    "SeriesNumber": (0x00200011, _INT),
    "InstanceNumber": (0x00200013, _INT),
}
_LAST_TAG = max(tag for tag, _ in FIELDS.values())
_TAGS = [Tag(tag) for tag, _ in FIELDS.values()]

_META_LENGTH = b"\x02\x00\x00\x00UL"  # (0002,0000) UL: the length of the meta group follows
_TRANSFER_SYNTAX = b"\x02\x00\x10\x00UI"  # (0002,0010) UI


@functools.lru_cache(maxsize=64)
def _syntax(uid: bytes) -> tuple[bool, bool] | None:
    """(implicit VR, little endian) of a transfer syntax; None for deflated or unknown ones (the long way)."""
    try:
        syntax = UID(uid.decode("ascii"))
        if syntax.is_transfer_syntax and not syntax.is_deflated:
            return syntax.is_implicit_VR, syntax.is_little_endian
    except (UnicodeDecodeError, ValueError):
        pass
    return None


class NotDicom(Exception):
    """The bytes are not a DICOM file the index can use; the message says why."""

@dataclass(frozen=True, slots=True)
class NeedMore:
    """The prefix ended before the attributes the index needs: read at least `size` bytes."""

    size: int

def _value(raw, how: str, encodings: list[str] | None) -> str | int | None:
    value = raw.value
    if value is None:
        return None
    if isinstance(value, bytes):
        if how == _INT:
            text = value.decode("ascii", "replace").strip(" \0")
            try:
                return int(float(text.split("\\")[0])) if text else None
            except ValueError:
                return None
        if how == _NAME:
            return _first(convert_PN(value, encodings or _guess_encodings(value)))
        if how == _TEXT:
            return _first(convert_text(value, encodings or _guess_encodings(value)))
        return value.decode("ascii", "replace").strip(" \0") or None
    return str(value).strip(" \0") or None  # already converted (implicit VR oddities)

def _guess_encodings(value: bytes) -> list[str]:
    """No SpecificCharacterSet: the standard says ASCII, but many exports write UTF-8 without declaring
    it. Bytes that are valid UTF-8 are read as such, anything else as Latin-1."""
    try:
        value.decode("utf-8")
        return ["UTF8"]
    except UnicodeDecodeError:
        return ["iso8859"]


def _first(value) -> str | None:
    """The first of a multi-valued text, as text."""
    if not isinstance(value, str | PersonName):
        value = value[0] if len(value) else ""
    return str(value).strip(" \0") or None


def _read_dataset(buf: bytes, fp: io.BytesIO, stop_when):
    """The dataset after the File Meta Information, and whether the file has one.

    The usual file (preamble, "DICM", a meta group led by its group length, a transfer
    syntax without deflate) is read by skipping the meta group and handing the rest to
    pydicom's `read_dataset`: parsing and checking the meta group is a fifth of
    `read_partial`'s time and the index needs none of it. Anything else goes through
    `read_partial`, which handles every odd case.
    """
    if buf[128:132] == b"DICM" and buf[132:138] == _META_LENGTH:
        start = 144 + int.from_bytes(buf[140:144], "little")
        at = buf.find(_TRANSFER_SYNTAX, 144, start)
        if at > 0:
            size = int.from_bytes(buf[at + 6:at + 8], "little")
            syntax = _syntax(buf[at + 8:at + 8 + size].rstrip(b"\0 "))
            if syntax is not None:
                fp.seek(start)
                implicit, little = syntax
                return read_dataset(fp, implicit, little, stop_when=stop_when, specific_tags=_TAGS), True
    try:
        ds = read_partial(fp, stop_when=stop_when, specific_tags=_TAGS)
    except InvalidDicomError:
        # Files without the 128-byte preamble and "DICM" (older exports) are still read,
        # but only kept when the parse finds the identifiers of an image below.
        fp.seek(0)
        ds = read_partial(fp, stop_when=stop_when, force=True, specific_tags=_TAGS)
    return ds, bool(len(getattr(ds, "file_meta", None) or ()))


def parse_head(buf: bytes, complete: bool) -> dict | NeedMore:
    """Parse the attributes of FIELDS from the first bytes of a file.

    `complete` is True when `buf` holds the whole file. Returns a dict keyed by
    DICOM keyword, `NeedMore` when a longer prefix is needed, or raises
    `NotDicom` with the reason.
    """
    if not buf:
        raise NotDicom("empty file")
    stopped = False

    def stop_when(tag, vr, length):
        nonlocal stopped
        if int.__gt__(tag, _LAST_TAG):  # int's own comparison: BaseTag's is 4x slower
            stopped = True
            return True
        return False

    fp = io.BytesIO(buf)
    try:
        ds, has_meta = _read_dataset(buf, fp, stop_when)
    except Exception as exc:  # pydicom raises many kinds on garbage or a cut header
        if not complete:
            return NeedMore(len(buf) * 2)
        raise NotDicom(f"not a readable DICOM file ({type(exc).__name__}: {exc})"[:300]) from exc

    if not stopped:
        # pydicom parses a cut buffer silently. Every image goes on past the attributes read
        # here (at least to its pixel data), so a parse that never passed them means the
        # header continues beyond these bytes, or, for a whole file, that the file is cut.
        if not complete:
            return NeedMore(len(buf) * 2)
        if has_meta and (0x00080018 in ds or 0x0020000D in ds):
            raise NotDicom(f"truncated DICOM file: the header ends at byte {len(buf)} before the image attributes")

    charset_raw = ds.get_item(0x00080005)
    encodings = _charsets(charset_raw)
    record: dict = {}
    for keyword, (tag, how) in FIELDS.items():
        raw = ds.get_item(tag)
        if raw is None:
            record[keyword] = None
            continue
        try:
            record[keyword] = _value(raw, how, encodings)
        except Exception:  # a value pydicom cannot decode: keep the file, lose the attribute
            record[keyword] = None
    if not (record["StudyInstanceUID"] or record["SeriesInstanceUID"] or record["SOPInstanceUID"]):
        if not has_meta:
            raise NotDicom("not a DICOM file (no DICOM header found)")
        raise NotDicom("DICOM file without study, series or instance UID (not an image, e.g. a DICOMDIR)")
    record.pop("SpecificCharacterSet")
    record["TransferSyntaxUID"] = _transfer_syntax(buf, ds)
    return record

#: the transfer syntax of a file without File Meta Information, by the encoding pydicom found (implicit VR, little endian)
_ENCODINGS = {(True, True): ImplicitVRLittleEndian, (False, True): ExplicitVRLittleEndian,
              (False, False): ExplicitVRBigEndian}

def _transfer_syntax(buf: bytes, ds) -> str | None:
    """The file's TransferSyntaxUID (0002,0010), from its meta group, else the encoding its dataset has."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return str(meta.TransferSyntaxUID).strip(" \0") or None
    if buf[128:132] == b"DICM" and buf[132:138] == _META_LENGTH:  # read by the fast path, meta skipped
        at = buf.find(_TRANSFER_SYNTAX, 144, 144 + int.from_bytes(buf[140:144], "little"))
        if at > 0:
            size = int.from_bytes(buf[at + 6:at + 8], "little")
            return buf[at + 8:at + 8 + size].decode("ascii", "replace").strip(" \0") or None
    return _ENCODINGS.get(tuple(ds.original_encoding))

def _charsets(raw) -> list[str] | None:
    """Python codecs for the file's SpecificCharacterSet; None when the file declares none."""
    if raw is None or not raw.value:
        return None
    value = raw.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        terms = [t.strip() for t in value.split("\\")]
    else:
        terms = [str(t).strip() for t in value]
    try:
        return convert_encodings(terms or [""])
    except Exception:
        return ["iso8859"]

def read_record(read_head, path: str, size: int = HEAD_SIZE, parse=parse_head) -> dict:
    """Read and parse one file through `read_head(path, n) -> bytes`, reading more while needed."""
    while True:
        buf = read_head(path, size)
        result = parse(buf, len(buf) < size)
        if not isinstance(result, NeedMore):
            return result
        if size >= MAX_HEAD_SIZE:
            raise NotDicom(f"DICOM header longer than {MAX_HEAD_SIZE // (1024 * 1024)} MiB")
        size = min(max(result.size, size * 2), MAX_HEAD_SIZE)
