"""Reading the few DICOM attributes the index needs from the start of a file.

pydicom does the parsing (`read_dataset`, and `read_partial`, the function
behind `dcmread(stop_before_pixels=True)`), with a `stop_when` that ends the
parse once group 0020's InstanceNumber is passed, so neither the rest of the
header nor the pixels are read. The caller hands over a prefix of the file;
pydicom parses a truncated buffer silently, so `parse_head` tells whether the
prefix reached the stop point and asks for more bytes when it did not.

The fast path (the usual file: preamble, "DICM", a File Meta group in Explicit
VR Little Endian, a transfer syntax pydicom knows) walks the meta group's
elements itself, as pydicom does (`file_meta`), and hands the rest to `read_dataset`: checking
and building the meta group is a fifth of `read_partial`'s time. Whenever it
cannot be sure (no meta group, no transfer syntax, one pydicom does not know,
meta elements that are not Explicit VR), the file goes through `read_partial`.
A meta group whose group length is wrong (a writer's slip, PS3.10 7.1) is read
by its elements, as pydicom reads it, and only noted. A deflated data set
(PS3.5 A.5) is inflated only as far as the attributes need, whatever the file's size.

A file is "truncated" when the bytes in hand are the whole file and its data set ends inside an
element, header or value: before the attributes, or after them, up to the end of Pixel Data's value
(what pydicom's `dcmread(stop_before_pixels=True)` fails on, and the Pixel Data it stops before). A
file longer than the bytes read is not walked past its attributes: the fast path stays a head read.

Values are read by their VR in `dicom_values`. The record's `notes` are the writer's
mistakes that did not stop the reading (for a debug line of the log, never an error).
"""

from __future__ import annotations

import io
import struct

from pydicom.dataelem import convert_raw_data_element
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset, read_partial
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from .dicom_values import READERS, character_sets, from_python
from .file_meta import UNDEFINED_LENGTH, CutHeader, NeedMore, NotDicom, inflate_dataset, read_file_meta

#: bytes read first; enough for most headers (measured: 2–10 KB), doubled while a header is longer
HEAD_SIZE = 16 * 1024
MAX_HEAD_SIZE = 64 * 1024 * 1024

# keyword -> (tag, VR of the data dictionary, PS3.6)
FIELDS: dict[str, tuple[int, str]] = {
    "SpecificCharacterSet": (0x00080005, "CS"),
    "SOPClassUID": (0x00080016, "UI"),
    "SOPInstanceUID": (0x00080018, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "StudyTime": (0x00080030, "TM"),
    "AccessionNumber": (0x00080050, "SH"),
    "Modality": (0x00080060, "CS"),
    "InstitutionName": (0x00080080, "LO"),
    "ReferringPhysicianName": (0x00080090, "PN"),
    "StudyDescription": (0x00081030, "LO"),
    "SeriesDescription": (0x0008103E, "LO"),
    "PatientName": (0x00100010, "PN"),
    "PatientID": (0x00100020, "LO"),
    "PatientBirthDate": (0x00100030, "DA"),
    "PatientSex": (0x00100040, "CS"),
    "BodyPartExamined": (0x00180015, "CS"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "SeriesInstanceUID": (0x0020000E, "UI"),
    "StudyID": (0x00200010, "SH"),
    "SeriesNumber": (0x00200011, "IS"),
    "InstanceNumber": (0x00200013, "IS"),
}
_LAST_TAG = max(tag for tag, _ in FIELDS.values())
_TAGS = [Tag(tag) for tag, _ in FIELDS.values()]
_PIXEL_DATA = 0x7FE00010
_SEQUENCE_END = (b"\xfe\xff\xdd\xe0\0\0\0\0", b"\xff\xfe\xe0\xdd\0\0\0\0")  # (FFFE,E0DD), little / big endian
_NO_TAGS = [Tag(0xFFFFFFFF)]  # a tag no data set holds: every value is skipped, not read
_READ = [(keyword, Tag(tag), vr) for keyword, (tag, vr) in FIELDS.items() if keyword != "SpecificCharacterSet"]

class _Parse:
    """One parse of a data set: whether it stopped past the attributes (and where), or ended before."""

    __slots__ = ("stopped", "stop_at")

    def __init__(self):
        self.stopped = False
        self.stop_at = 0

    def stop_when(self, tag, vr, length) -> bool:
        if int.__gt__(tag, _LAST_TAG):  # int's own comparison: BaseTag's is 4x slower
            self.stopped = True
            return True
        return False


class _Tracking(_Parse):
    """A parse that also remembers where its last element is, to tell a cut file from one that ends."""

    __slots__ = ("fp", "last_at", "last_length", "last_tag")

    def __init__(self, fp):
        super().__init__()
        self.fp = fp
        self.last_at = self.last_length = self.last_tag = None

    def stop_when(self, tag, vr, length) -> bool:
        if int.__gt__(tag, _LAST_TAG):
            self.stopped = True
            return True
        self.last_tag, self.last_length, self.last_at = tag, length, self.fp.tell()
        return False

    def cut_at(self, data: bytes) -> str | None:
        """Why the data set is cut, when its last element does not end where the data ends."""
        if self.stopped or self.last_at is None:
            return None
        end = len(data)
        if self.last_length == UNDEFINED_LENGTH:
            if data.endswith(_SEQUENCE_END):
                return None
            return f"the sequence ({self.last_tag >> 16:04X},{self.last_tag & 0xFFFF:04X}) is not closed"
        value_end = self.last_at + self.last_length
        if value_end == end:
            return None
        if value_end > end:
            return (f"the element ({self.last_tag >> 16:04X},{self.last_tag & 0xFFFF:04X}) at byte "
                    f"{self.last_at} claims {self.last_length} bytes")
        return f"{end - value_end} bytes of an element header"


class _Rest(_Tracking):
    """A walk over the elements after the attributes, to the end of Pixel Data's value (what follows it,
    such as trailing padding, is not looked at, as pydicom's reader does not)."""

    __slots__ = ()

    def stop_when(self, tag, vr, length) -> bool:
        if self.last_tag == _PIXEL_DATA:  # the value of Pixel Data was passed whole
            self.stopped = True
            return True
        self.last_tag, self.last_length, self.last_at = tag, length, self.fp.tell()
        return False

    def cut_at(self, data: bytes) -> str | None:
        if (self.last_tag == _PIXEL_DATA and self.last_length != UNDEFINED_LENGTH
                and self.last_at + self.last_length <= len(data)):
            return None
        return super().cut_at(data)


def _read_elements(fp, data: bytes, implicit: bool, little: bool, stop_when, tags):
    try:
        return read_dataset(fp, implicit, little, stop_when=stop_when, specific_tags=tags)
    except struct.error:  # a 4-byte length (PS3.5 7.1.2) that is not there
        if fp.tell() < len(data):
            raise
        raise CutHeader from None


def _dataset(data: bytes, start: int, implicit: bool, little: bool, tracking: bool = False):
    fp = io.BytesIO(data)
    fp.seek(start)
    parse = _Tracking(fp) if tracking else _Parse()
    ds = _read_elements(fp, data, implicit, little, parse.stop_when, _TAGS)
    if not parse.stopped and not tracking:
        return _dataset(data, start, implicit, little, True)  # rare: read again, knowing where it ends
    parse.stop_at = fp.tell()  # pydicom rewinds to the element it stopped at
    return ds, parse


def _cut_after(data: bytes, start: int, encoding) -> str | None:
    """Why a whole data set is cut after the attributes read: its elements, from `start` (Pixel Data
    included), must end where the data ends (PS3.5 7.1, PS3.10 7.2). Values are skipped, not read."""
    implicit, little = encoding
    if implicit is None:
        return None
    fp = io.BytesIO(data)
    fp.seek(start)
    rest = _Rest(fp)
    try:
        _read_elements(fp, data, implicit, little, rest.stop_when, _NO_TAGS)
    except CutHeader:
        return "an element header"
    return rest.cut_at(data)


def _read(buf: bytes, complete: bool):
    """(data set, parse, the bytes it was read from, transfer syntax, has meta, notes), or NeedMore."""
    meta = read_file_meta(buf, complete) if buf[128:132] == b"DICM" else None
    if isinstance(meta, NeedMore):
        return meta
    if meta is not None and meta.syntax is not None:
        implicit, little, deflated = meta.syntax
        if deflated:
            result = inflate_dataset(buf, meta, complete, lambda data: _dataset(data, 0, False, True))
            if isinstance(result, NeedMore):
                return result
            ds, parse, data, whole = result
        else:
            ds, parse = _dataset(buf, meta.end, implicit, little)
            data, whole = buf, True
        return ds, parse, data, whole, meta.uid, True, meta.notes
    # pydicom's own reader, for anything the fast path is not sure of
    fp = io.BytesIO(buf)
    parse = _Tracking(fp)
    try:
        ds = _partial(fp, buf, parse, False)
    except InvalidDicomError:
        # Files without the 128-byte preamble and "DICM" (older exports) are still read,
        # but only kept when the parse finds the identifiers of an image below.
        fp.seek(0)
        parse = _Tracking(fp)
        ds = _partial(fp, buf, parse, True)
    parse.stop_at = fp.tell()
    notes = ("read by pydicom's reader (the fast path was not sure of the File Meta Information)",) \
        if meta is not None else ()
    return ds, parse, buf, True, _transfer_syntax(ds), bool(len(getattr(ds, "file_meta", None) or ())), notes


def _partial(fp, buf: bytes, parse: _Tracking, force: bool):
    try:
        return read_partial(fp, stop_when=parse.stop_when, force=force, specific_tags=_TAGS)
    except struct.error:  # a 4-byte length (PS3.5 7.1.2) that is not there
        if fp.tell() < len(buf):
            raise
        raise CutHeader from None


def parse_head(buf: bytes, complete: bool) -> dict | NeedMore:
    """Parse the attributes of FIELDS from the first bytes of a file.

    `complete` is True when `buf` holds the whole file. Returns a dict keyed by
    DICOM keyword (plus `notes`: the writer's mistakes read past, for the log),
    `NeedMore` when a longer prefix is needed, or raises `NotDicom` with the reason.
    """
    if not buf:
        raise NotDicom("empty file")
    try:
        return _parse_head(buf, complete)
    except NotDicom:
        raise
    except CutHeader:
        if not complete:
            return NeedMore(len(buf) * 2)
        raise NotDicom(f"truncated DICOM file: it ends at byte {len(buf)} within its data set "
                       "(in an element header)") from None
    except Exception as exc:  # pydicom raises many kinds on garbage or a cut header
        if not complete:
            return NeedMore(len(buf) * 2)
        raise NotDicom(f"not a readable DICOM file ({type(exc).__name__}: {exc})"[:300]) from exc


def _parse_head(buf: bytes, complete: bool) -> dict | NeedMore:
    result = _read(buf, complete)
    if isinstance(result, NeedMore):
        return result
    ds, parse, data, whole, syntax, has_meta, notes = result
    cut = None
    if not parse.stopped:
        # pydicom parses a cut buffer silently. A parse that never passed the attributes read here
        # means the header goes on beyond these bytes, or, for a whole file, that the file ends
        # there: cleanly after its last element, or cut in the middle of one.
        if not complete:
            return NeedMore(len(buf) * 2)
        cut = parse.cut_at(data)
    elif complete and whole:
        # The whole file is in hand (a small file): the rest of its data set must end where the file
        # ends too, or the file is cut (within an element's header or value, Pixel Data's included)
        cut = _cut_after(data, parse.stop_at, ds.original_encoding[:2])

    record = _values(ds)
    has_ids = record["StudyInstanceUID"] or record["SeriesInstanceUID"] or record["SOPInstanceUID"]
    if not has_meta and not has_ids:
        raise NotDicom("not a DICOM file (no DICOM header found)")
    if cut is not None:
        raise NotDicom(f"truncated DICOM file: it ends at byte {len(buf)} within its data set ({cut})")
    if not has_ids:
        raise NotDicom("DICOM file without study, series or instance UID (not an image, e.g. a DICOMDIR)")
    charset = ds.get_item(0x00080005)
    if charset is not None and isinstance(charset.value, bytes) and charset.value.rstrip(b" ") != \
            charset.value.rstrip(b" \0"):
        notes += ("SpecificCharacterSet padded with NUL bytes",)
    record["TransferSyntaxUID"] = syntax
    record["notes"] = list(notes)
    return record


#: the transfer syntax of a file without File Meta Information, by the encoding pydicom found
_ENCODINGS = {(True, True): ImplicitVRLittleEndian, (False, True): ExplicitVRLittleEndian,
              (False, False): ExplicitVRBigEndian}


def _transfer_syntax(ds) -> str | None:
    """The TransferSyntaxUID (0002,0010) of a file pydicom's reader read: its meta group's, else the
    encoding its data set has."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return str(meta.TransferSyntaxUID).strip(" \0") or None
    return _ENCODINGS.get(tuple(ds.original_encoding))


def _values(ds) -> dict:
    """The stored values of FIELDS, each read by its VR; a value that cannot be read is None."""
    raw = ds.get_item(0x00080005)
    try:
        encodings = character_sets(raw.value) if raw is not None and isinstance(raw.value, bytes) else None
    except Exception:  # pydicom warns about a character set it does not know and reads Latin-1
        encodings = None
    record: dict = {}
    for keyword, tag, vr in _READ:
        raw = ds.get_item(tag)
        if raw is None:
            record[keyword] = None
            continue
        try:
            record[keyword] = _value(raw, vr, encodings)
        except Exception:  # a value pydicom cannot decode: keep the file, lose the attribute
            record[keyword] = None
    return record


def _value(raw, vr: str, encodings):
    value = raw.value
    if value is None:
        return None
    written = getattr(raw, "VR", None)
    if isinstance(value, bytes) and written in (vr, None, "UN"):
        return READERS[vr](value, encodings)
    # Written with another VR than the dictionary's (or already converted): pydicom reads it by the
    # VR it has, then the stored value follows the dictionary's
    element = convert_raw_data_element(raw, encoding=list(encodings) if encodings else None) \
        if isinstance(value, bytes) else raw
    return from_python(vr, element.value)


def read_record(read_head, path: str, size: int = HEAD_SIZE, parse=parse_head) -> dict:
    """Read and parse one file through `read_head(path, n) -> bytes`, reading more while needed."""
    while True:
        buf = read_head(path, size)
        result = parse(buf, len(buf) < size)
        if not isinstance(result, NeedMore):
            return result
        if size >= MAX_HEAD_SIZE:
            raise NotDicom(f"no DICOM header ends within the first {MAX_HEAD_SIZE // (1024 * 1024)} MiB")
        size = min(max(result.size, size * 2), MAX_HEAD_SIZE)
