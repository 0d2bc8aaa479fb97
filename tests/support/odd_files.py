"""Odd files from real archives, built at test time: each function writes one kind into a NAS folder.

They follow the cases of the project's odd-files collection (each a kind of file that people running
DICOM archives have reported in public; the source is named in each docstring). `EXPECTED` gives the
right value of each: what the index must hold once they are indexed.
"""

from __future__ import annotations

import os
import random
import zlib
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def base(study: str, series: str | None, sop: str, **kw) -> Dataset:
    """A small CT-like data set; keywords set (None: leave out) attributes."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = sop
    ds.StudyDate = "20240102"
    ds.Modality = "CT"
    ds.StudyDescription = "CHEST"
    ds.SeriesDescription = "AXIAL"
    ds.PatientName = "DOE^JOHN"
    ds.PatientID = "PID001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = study
    if series:
        ds.SeriesInstanceUID = series
    ds.SeriesNumber = 3
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = 2
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.PixelData = b"\0" * 8
    for keyword, value in kw.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def save(path: Path | str, ds: Dataset, syntax=ExplicitVRLittleEndian) -> Path | str:
    """Write `ds` as a DICOM file (preamble, meta group with the implementation name `ODDCASE_1`)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_to(path, ds, syntax)
    return path


def save_to(target, ds: Dataset, syntax=ExplicitVRLittleEndian) -> None:
    """Write `ds` as a DICOM file to a path or a binary file object, in the transfer syntax `syntax`."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    meta.ImplementationClassUID = "1.2.3.4.5.6.7"
    meta.ImplementationVersionName = "ODDCASE_1"  # 9 characters: padded to 10
    ds.file_meta = meta
    ds.save_as(target, enforce_file_format=True)


def patch_value(path: Path, find: bytes, new_value: bytes) -> None:
    """Replace the value of the Explicit VR element (2-byte length) whose tag and VR are `find`."""
    data = path.read_bytes()
    at = data.index(find)
    old_length = int.from_bytes(data[at + 6:at + 8], "little")
    data = data[:at + 6] + len(new_value).to_bytes(2, "little") + new_value + data[at + 8 + old_length:]
    path.write_bytes(data)


def huge_integer_strings(nas: Path) -> None:
    """Case 1: SeriesNumber of 21 digits beside an ordinary file; InstanceNumber `1E19`.
    pydicom issues #355 and #640."""
    p = save(nas / "a" / "IM1.dcm", base("1.2.3.1.1", "1.2.3.1.1.1", "1.2.3.1.1.1.1",
                                          PatientName="HUGE^SERIESNUMBER", PatientID="P1A", SeriesNumber="1"))
    patch_value(p, b"\x20\x00\x11\x00IS", b"456115117112105110101 ")
    save(nas / "b" / "IM1.dcm", base("1.2.3.1.2", "1.2.3.1.2.1", "1.2.3.1.2.1.1",
                                     PatientName="NORMAL^NEIGHBOUR", PatientID="P1B"))
    save(nas / "c" / "IM1.dcm", base("1.2.3.1.3", "1.2.3.1.3.1", "1.2.3.1.3.1.1", PatientName="HUGE^INSTANCENUMBER",
                                     PatientID="P1C", InstanceNumber="1E19"))
    save(nas / "c" / "IM2.dcm", base("1.2.3.1.3", "1.2.3.1.3.1", "1.2.3.1.3.1.2", PatientName="HUGE^INSTANCENUMBER",
                                     PatientID="P1C", InstanceNumber=2))


LATIN1_FOLDER = b"K\xf6ln"
LATIN1_FILE = b"M\xfcller.dcm"


def latin1_names(nas: Path) -> bytes:
    """Case 2: a folder and a file named in Latin-1 bytes (not UTF-8), beside an ordinary file.
    openwrt/packages #18557, jjjake/internetarchive #284. Returns the file's path relative to `nas`."""
    save(nas / "ok" / "IM1.dcm", base("1.2.3.2.1", "1.2.3.2.1.1", "1.2.3.2.1.1.1",
                                      PatientName="ORDINARY^OTTO", PatientID="P2A"))
    folder = os.fsencode(nas) + b"/" + LATIN1_FOLDER
    os.makedirs(folder, exist_ok=True)
    save(os.fsdecode(folder + b"/" + LATIN1_FILE), base("1.2.3.2.2", "1.2.3.2.2.1", "1.2.3.2.2.1.1",
                                           PatientName="Müller^Jürgen", PatientID="P2B"))
    return LATIN1_FOLDER + b"/" + LATIN1_FILE


def meta_length_off_by_one(nas: Path) -> None:
    """Case 3: File Meta Information Group Length one byte short (explicit and implicit data sets).
    Enet4/dicom-rs PR #566, dgobbi/vtk-dicom #158, pydicom #140."""
    for i, syntax in enumerate((ExplicitVRLittleEndian, ImplicitVRLittleEndian), start=1):
        p = save(nas / f"IM{i}.dcm", base("1.2.3.3.1", "1.2.3.3.1.1", f"1.2.3.3.1.1.{i}",
                                          PatientName="METALEN^MIA", PatientID="P3", InstanceNumber=i), syntax)
        data = bytearray(p.read_bytes())
        data[140:144] = (int.from_bytes(data[140:144], "little") - 1).to_bytes(4, "little")
        p.write_bytes(bytes(data))


NUL_PADDED = [("ISO_IR 144", "Иванов^Иван", "Грудная клетка"),
              ("ISO_IR 192", "García Márquez^José", "Tórax"),
              ("ISO_IR 126", "Παπαδόπουλος^Γιώργος", "Θώρακας")]


def nul_padded_charsets(nas: Path) -> None:
    """Case 4: SpecificCharacterSet padded with NUL bytes. pydicom #940 and #2338."""
    for i, (charset, name, description) in enumerate(NUL_PADDED, start=1):
        p = save(nas / f"IM{i}.dcm", base(f"1.2.3.4.{i}", f"1.2.3.4.{i}.1", f"1.2.3.4.{i}.1.1", PatientID=f"P4{i}",
                                          SpecificCharacterSet=charset, PatientName=name,
                                          StudyDescription=description))
        patch_value(p, b"\x08\x00\x05\x00CS", charset.encode() + b"\0\0")


def deflated(nas: Path, big_bytes: int = 70 * 2**20) -> None:
    """Case 11: Deflated Explicit VR Little Endian, a sequence before the series attributes; one file
    over 64 MiB. fo-dicom #1097 and #227."""
    def with_sequence(ds: Dataset) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = CT_IMAGE
        item.ReferencedSOPInstanceUID = "1.2.3.11.9"
        ds.ReferencedImageSequence = [item]
        return ds

    save(nas / "small.dcm", with_sequence(base("1.2.3.11.1", "1.2.3.11.1.1", "1.2.3.11.1.1.1",
                                               PatientName="DEFLATE^DORIS", PatientID="P11A")),
         DeflatedExplicitVRLittleEndian)
    big = with_sequence(base("1.2.3.11.2", "1.2.3.11.2.1", "1.2.3.11.2.1.1", PatientName="DEFLATE^BERTA",
                             PatientID="P11B", SeriesDescription="LARGE MULTIFRAME", PixelData=None))
    write_deflated(nas / "big.dcm", big, big_bytes)


def write_deflated(path: Path, ds: Dataset, pixel_bytes: int) -> None:
    """A deflated file whose pixel data (random bytes, streamed) makes it `pixel_bytes` long or more."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.3.4.5.6.7"
    head = DicomBytesIO()
    head.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(head, meta)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)  # the data set before its pixels, Explicit VR Little Endian
    pixel_bytes += pixel_bytes % 2
    body.write(b"\xe0\x7f\x10\x00OW\0\0" + pixel_bytes.to_bytes(4, "little"))
    rng = random.Random(11)
    squeeze = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(head.getvalue())
        fh.write(squeeze.compress(body.getvalue()))
        left = pixel_bytes
        while left:
            n = min(left, 4 * 2**20)
            fh.write(squeeze.compress(rng.randbytes(n)))
            left -= n
        fh.write(squeeze.flush())


def series_numbers(nas: Path) -> None:
    """Case 12: no SeriesInstanceUID; SeriesNumber `1.0`, `1`, ` 1 `, `2`, empty and `1.5` in one study.
    pydicom PR #1240, fo-dicom PR #1119."""
    for i, number in enumerate(["1.0", "1", " 1 ", "2", "", "1.5"], start=1):
        save(nas / f"IM{i}.dcm", base("1.2.3.12.1", None, f"1.2.3.12.1.0.{i}", PatientName="ISNUM^IDA",
                                      PatientID="P12", InstanceNumber=i, SeriesNumber=number,
                                      SeriesDescription=f"SN[{number}]"))


CASES = {"case1": huge_integer_strings, "case2": latin1_names, "case3": meta_length_off_by_one,
         "case4": nul_padded_charsets, "case11": deflated, "case12": series_numbers}


def write_all(root: Path, big_bytes: int = 70 * 2**20) -> None:
    """Every case, each in a folder of its own under `root`."""
    for name, write in CASES.items():
        if write is deflated:
            deflated(root / name, big_bytes)
        else:
            write(root / name)


#: (PatientID, the series' values the index must hold, file count) of every series of every case
EXPECTED = [
    ("P1A", {"PatientName": "HUGE^SERIESNUMBER", "SeriesInstanceUID": "1.2.3.1.1.1", "SeriesNumber": None}, 1),
    ("P1B", {"PatientName": "NORMAL^NEIGHBOUR", "SeriesNumber": 3}, 1),
    ("P1C", {"PatientName": "HUGE^INSTANCENUMBER", "SeriesInstanceUID": "1.2.3.1.3.1"}, 2),
    ("P2A", {"PatientName": "ORDINARY^OTTO"}, 1),
    ("P2B", {"PatientName": "Müller^Jürgen"}, 1),
    ("P3", {"PatientName": "METALEN^MIA", "SeriesInstanceUID": "1.2.3.3.1.1"}, 2),
    ("P41", {"PatientName": "Иванов^Иван", "StudyDescription": "Грудная клетка"}, 1),
    ("P42", {"PatientName": "García Márquez^José", "StudyDescription": "Tórax"}, 1),
    ("P43", {"PatientName": "Παπαδόπουλος^Γιώργος", "StudyDescription": "Θώρακας"}, 1),
    ("P11A", {"PatientName": "DEFLATE^DORIS"}, 1),
    ("P11B", {"PatientName": "DEFLATE^BERTA", "SeriesDescription": "LARGE MULTIFRAME"}, 1),
    ("P12", {"SeriesNumber": 1, "SeriesInstanceUID": None}, 3),  # 1.0, 1 and ' 1 '
    ("P12", {"SeriesNumber": 2}, 1),
    ("P12", {"SeriesNumber": None}, 2),  # empty, and 1.5 (not an integer)
]
