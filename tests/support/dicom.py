"""Small DICOM files for tests, written with pydicom (the benchmark corpus lives in bench/corpus.py)."""

from __future__ import annotations

from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def write_dicom(path: Path | str, *, charset: str | None = None, pixels: int = 64, **attrs) -> Path:
    """Write a small CT image. `attrs` are DICOM keywords; a value of None leaves the attribute out."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    values = {
        "SOPClassUID": CT_IMAGE, "SOPInstanceUID": generate_uid(), "StudyDate": "20240102",
        "Modality": "CT", "PatientName": "DOE^JOHN", "PatientID": "P001", "StudyInstanceUID": generate_uid(),
        "SeriesInstanceUID": generate_uid(), "SeriesNumber": 1, "InstanceNumber": 1,
        "StudyDescription": "CHEST", "SeriesDescription": "AXIAL",
    }
    values.update(attrs)
    for keyword, value in values.items():
        if value is not None:
            setattr(ds, keyword, value)
    ds.Rows = ds.Columns = 1
    ds.BitsAllocated = 16
    ds.PixelData = b"\0" * pixels
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path | str, count: int, **attrs) -> list[Path]:
    """`count` instances of one series in `folder`."""
    attrs.setdefault("StudyInstanceUID", generate_uid())
    attrs.setdefault("SeriesInstanceUID", generate_uid())
    return [write_dicom(Path(folder) / f"IM{i:05d}.dcm", InstanceNumber=i + 1, **attrs) for i in range(count)]
