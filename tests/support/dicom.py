"""Small DICOM files for tests, written with pydicom (the benchmark corpus lives in bench/corpus.py).

The header is a real DICOM header; the pixel data is appended by hand so it can
be random bytes (byte-for-byte comparisons then catch any offset error) or a
sparse hole (a 2 GB series costs no disk space and no time to write).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
PIXEL_DATA_OB = b"\xe0\x7f\x10\x00OB\x00\x00"  # (7FE0,0010) OB, explicit VR little endian, 4-byte length


def write_dicom(path: Path | str, *, charset: str | None = None, pixel_bytes: int = 64, sparse: bool = False,
                **attrs) -> Path:
    """One CT instance. `attrs` are DICOM keywords (None leaves one out); pixels random or a sparse hole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {
        "SOPClassUID": CT_IMAGE, "SOPInstanceUID": generate_uid(), "StudyDate": "20240102", "Modality": "CT",
        "PatientName": "DOE^JOHN", "PatientID": "P001", "StudyInstanceUID": generate_uid(),
        "SeriesInstanceUID": generate_uid(), "SeriesNumber": 1, "InstanceNumber": 1,
        "StudyDescription": "CHEST", "SeriesDescription": "AXIAL",
    }
    values.update(attrs)
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    for keyword, value in values.items():
        if value is not None:
            setattr(ds, keyword, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    pixel_bytes += pixel_bytes % 2  # DICOM values have an even length
    with open(path, "ab") as fh:
        fh.write(PIXEL_DATA_OB + struct.pack("<I", pixel_bytes))
        if sparse:
            fh.truncate(fh.tell() + pixel_bytes)
        else:
            fh.write(os.urandom(pixel_bytes))
    return path


def write_series(folder: Path | str, count: int, *, names: str = "IM{:05d}.dcm", **kw) -> list[Path]:
    """`count` instances of one series in `folder` (same study and series UIDs unless given)."""
    kw.setdefault("StudyInstanceUID", generate_uid())
    kw.setdefault("SeriesInstanceUID", generate_uid())
    return [write_dicom(Path(folder) / names.format(i + 1), InstanceNumber=i + 1, **kw) for i in range(count)]


def write_deeply_nested(path: Path | str, depth: int, **attrs) -> Path:
    """An instance whose header holds sequences nested `depth` levels deep (undefined lengths), before the
    attributes the index reads: a parser that recurses per level without a bound overflows its stack."""
    path = write_dicom(path, **attrs)
    data = path.read_bytes()
    start = 144 + int.from_bytes(data[140:144], "little")  # after the File Meta Information
    opening = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"  # (0008,1115)
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    path.write_bytes(data[:start] + opening * depth + closing * depth + data[start:])
    return path
