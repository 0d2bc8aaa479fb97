"""The layout of a DICOM file around its data set: the File Meta Information and a deflated data set.

`read_file_meta` walks the meta group after "DICM" (PS3.10 7.1) element by element, as pydicom does, for
the fast path of `headers`: where the data set starts, and its transfer syntax. A meta group whose group
length is wrong (a writer's slip) is read by its elements and only noted. `inflate_dataset` inflates a
deflated data set (PS3.5 A.5) only as far as the attributes need, whatever the file's size.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from pydicom.uid import UID

INFLATE_STEP = 64 * 1024  # bytes of a deflated data set inflated at first; doubled while needed
ELEMENT = struct.Struct("<HH2sH")  # an Explicit VR Little Endian element header: group, element, VR, length

UNDEFINED_LENGTH = 0xFFFFFFFF  # PS3.5 7.1.1
# Explicit VR elements with a 4-byte length (PS3.5 7.1.2)
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
# transfer syntaxes whose data set is deflated: PS3.5 A.5, and the JPIP Referenced Deflate syntaxes
DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95", "1.2.840.10008.1.2.4.205"}


@functools.lru_cache(maxsize=64)
def transfer_syntax(uid: bytes) -> tuple[bool, bool, bool] | None:
    """(implicit VR, little endian, deflated) of a transfer syntax; None for one pydicom does not know."""
    try:
        syntax = UID(uid.decode("ascii").strip(" \0"))
        if syntax in DEFLATED:
            return False, True, True
        if syntax.is_transfer_syntax:
            return syntax.is_implicit_VR, syntax.is_little_endian, False
    except (UnicodeDecodeError, ValueError):
        pass
    return None


class NotDicom(Exception):
    """The bytes are not a DICOM file the index can use; the message says why."""


@dataclass(frozen=True, slots=True)
class NeedMore:
    """The prefix ended before the attributes the index needs: read at least `size` bytes."""

    size: int


@dataclass(frozen=True, slots=True)
class FileMeta:
    end: int  # where the data set starts
    syntax: tuple[bool, bool, bool] | None
    uid: str | None  # TransferSyntaxUID (0002,0010)
    notes: tuple[str, ...]


def read_file_meta(buf: bytes, complete: bool) -> FileMeta | NeedMore | None:
    """Walk the File Meta Information after "DICM" (PS3.10 7.1) element by element, as pydicom does.

    None when the fast path cannot be sure of it (then pydicom reads the file).
    """
    at, size = 132, len(buf)
    declared = syntax_uid = None
    while True:
        if at + 8 > size:
            if not complete:
                return NeedMore(size * 2)
            if at == size and at > 132 and declared is not None and at >= 144 + declared:
                raise NotDicom(f"a DICOM file without a data set: it ends after its File Meta Information "
                               f"(byte {size})")
            raise NotDicom(f"truncated DICOM file: it ends at byte {size} within its File Meta Information")
        group, element, vr, length = ELEMENT.unpack_from(buf, at)
        if group != 2:
            break
        if not (b"AA" <= vr <= b"ZZ"):
            return None  # not Explicit VR (pydicom retries such a group as implicit)
        value_at = at + 8
        if vr in LONG_VRS:
            (length,) = struct.unpack_from("<I", buf, at + 8) if at + 12 <= size else (0,)
            value_at = at + 12
        if length == UNDEFINED_LENGTH:
            return None
        if value_at + length > size:
            if not complete:
                return NeedMore(size * 2)
            raise NotDicom(f"truncated DICOM file: it ends at byte {size} within its File Meta Information")
        if element == 0 and vr == b"UL" and length == 4:
            (declared,) = struct.unpack_from("<I", buf, value_at)
        elif element == 0x10:
            syntax_uid = buf[value_at:value_at + length]
        at = value_at + length
    if syntax_uid is None:
        return None  # pydicom guesses the encoding
    notes = ()
    if declared is not None and declared != at - 144:
        notes = (f"File Meta Information Group Length is {declared}, the group has {at - 144} bytes "
                 "(read by its elements)",)
    if buf[at:at + 2] == b"\0\0":
        return None  # a command group (0000) before the data set: pydicom's reader knows it
    uid = bytes(syntax_uid)
    return FileMeta(at, transfer_syntax(uid), uid.decode("latin-1").strip(" \0") or None, notes)


class CutHeader(Exception):
    """The bytes end inside an element header (pydicom's reader fails on its 4-byte length)."""


def inflate_dataset(buf: bytes, meta: FileMeta, complete: bool, parse: Callable[[bytes], tuple]):
    """Parse the deflated data set after `meta` with `parse(data)` -> (data set, parse state whose
    `stopped` says it passed the attributes; CutHeader when the data ends inside an element header),
    inflating only as much as the attributes need. (data set, parse state, inflated bytes, whether they
    are the whole data set), or NeedMore; NotDicom for a corrupt stream."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        data = inflater.decompress(buf[meta.end:], INFLATE_STEP)
        while True:
            try:
                ds, state = parse(data)
            except CutHeader:
                if not inflater.unconsumed_tail:
                    if inflater.eof or complete:
                        raise
                    return NeedMore(len(buf) * 2)
            else:
                if state.stopped or not inflater.unconsumed_tail:
                    break
            data += inflater.decompress(inflater.unconsumed_tail, max(INFLATE_STEP, len(data)))
    except zlib.error as exc:  # corrupt, not cut: more bytes would not help
        raise NotDicom(f"the deflated data set cannot be inflated (zlib: {exc})") from exc
    if not state.stopped and not (inflater.eof or complete):
        return NeedMore(len(buf) * 2)
    return ds, state, data, inflater.eof
