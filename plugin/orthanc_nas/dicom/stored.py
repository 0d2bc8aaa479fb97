"""A file read from the NAS, kept as its stored bytes until it must be decoded.

Most files are sent in the transfer syntax they are stored in (PS3.4 B.2: the peer accepted it). Those are
never decoded: only their File Meta Information (PS3.10 7.1) is read, and the stored data set goes to
pynetdicom as it is (`pynetdicom_internals.send_as_stored`). A file the peer takes only converted, or one
without a meta group, is decoded by pydicom as before (`decoded`).
"""

from __future__ import annotations

import io
import tempfile

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filereader import read_dataset, read_preamble
from pydicom.uid import UID, ImplicitVRLittleEndian


class StoredFile(Dataset):
    """A dataset holding only SOP Class UID, SOP Instance UID and the file meta (from the file's meta group),
    plus `stored` (the file's bytes as on the NAS) and `spooled`, the same bytes in a temporary file
    (deleted when it is closed or collected), written by the reader thread. pynetdicom sees a Dataset;
    `send_as_stored` sends the spooled file from the start of its data set."""

    stored: bytes
    spooled: tempfile._TemporaryFileWrapper


def _not_meta(tag, vr, length) -> bool:
    return tag.group != 2


def read_stored(data: bytes, sop_instance: str, transfer_syntax: str | None) -> Dataset:
    """`data` (a DICOM file's bytes) as a `StoredFile` when its meta group names its SOP class, instance and
    transfer syntax, else decoded by pydicom. ValueError if the file's SOP Instance UID is not
    `sop_instance` (it changed on the NAS since it was indexed)."""
    fp = io.BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_not_meta)
        complete = all(k in meta for k in ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID",
                                           "TransferSyntaxUID"))
    except Exception:  # no preamble, a broken meta group: pydicom's forgiving reading below decides
        complete = False
    if not complete:
        return decoded(data, sop_instance, transfer_syntax)
    if str(meta.MediaStorageSOPInstanceUID) != sop_instance:
        raise ValueError("the file changed on the NAS since it was indexed (another SOP Instance UID)")
    ds = StoredFile()
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.file_meta = FileMetaDataset(meta)
    ds.stored = data
    ds.spooled = tempfile.NamedTemporaryFile(prefix="nas-store-", suffix=".dcm", dir="/dev/shm")
    ds.spooled.write(data)
    ds.spooled.flush()
    return ds


def decoded(data: bytes, sop_instance: str, transfer_syntax: str | None) -> Dataset:
    """`data` decoded by pydicom (for pynetdicom to encode, converting if need be); ValueError as
    `read_stored`."""
    ds = dcmread(io.BytesIO(data), force=True)
    if str(ds.get("SOPInstanceUID", "")) != sop_instance:
        raise ValueError("the file changed on the NAS since it was indexed (another SOP Instance UID)")
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:  # a file without meta group: the syntax it has
        ds.file_meta = meta = meta or FileMetaDataset()
        meta.TransferSyntaxUID = UID(transfer_syntax or ImplicitVRLittleEndian)
    return ds


def as_accepted(accepted: list, ds: Dataset) -> Dataset:
    """`ds` as it can go to the peer: a `StoredFile` whose SOP class and stored transfer syntax the peer
    accepted in one presentation context stays as stored; another one is decoded, for pynetdicom to
    convert it (the caller checked with `unsendable` that it can)."""
    if not isinstance(ds, StoredFile):
        return ds
    sop_class, syntax = str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)
    if any(cx.abstract_syntax == sop_class and cx.transfer_syntax and cx.transfer_syntax[0] == syntax
           for cx in accepted):
        return ds
    ds.spooled.close()
    return decoded(ds.stored, str(ds.SOPInstanceUID), syntax)
