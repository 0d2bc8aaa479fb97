"""The fast header path against pydicom's own reader: same stored values, or an error with a true reason.

For every input, `read_record` (the indexer's reading, with small first reads so the "read more" path
runs too) and `pydicom.dcmread(stop_before_pixels=True)` must agree on every field the index stores,
each taken through the same rules of the index (`dicom_values.from_python` on pydicom's decoded
value). Or the file is refused, with a reason that is true: pydicom cannot read it either, it has no
identifiers, or it is really cut (the generator cut it, or made an element claim more bytes than follow).

Inputs: pydicom's bundled test files, the odd-file cases, and a fuzzed corpus: valid headers with
odd values (integer strings, dates, names in several character sets), elements written with another
VR, every transfer syntax pydicom writes (deflated too), then mutated at the byte level (meta group
length, NUL-padded or misspelled character sets, element lengths, truncation).
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pydicom.values import convert_PN, convert_text
from tests.support import odd_files

from orthanc_nas.dicom_values import from_python, guess_encodings
from orthanc_nas.file_meta import NotDicom
from orthanc_nas.headers import FIELDS, read_record

STORED = {k: v for k, v in FIELDS.items() if k != "SpecificCharacterSet"}
IDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def reference(data: bytes) -> dict | None:
    """What the index should hold, from `pydicom.dcmread(stop_before_pixels=True)`; None if pydicom fails."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            try:
                ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            except InvalidDicomError:
                ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            declared = ds.get(0x00080005)
            record = {}
            for keyword, (tag, vr) in STORED.items():
                raw = ds.get_item(tag)
                if raw is None:
                    record[keyword] = None
                    continue
                if (isinstance(raw, RawDataElement) and isinstance(raw.value, bytes) and raw.VR in (vr, None, "UN")
                        and vr in ("PN", "LO", "SH") and not (declared and declared.value)):
                    # no character set declared: the index reads undeclared UTF-8 as UTF-8 (pydicom: Latin-1)
                    convert = convert_PN if vr == "PN" else convert_text
                    record[keyword] = from_python(vr, convert(raw.value, guess_encodings(raw.value)))
                    continue
                try:
                    record[keyword] = from_python(vr, ds[tag].value)
                except Exception:
                    record[keyword] = None
            return record
        except Exception:
            return None


def check(data: bytes, cut: bool = False, first_read: int = 16 * 1024, whole: bytes | None = None) -> str:
    """Compare both readers on `data`; `cut`: the file is known to be cut (or to claim bytes past its end);
    `whole`: the file before it was cut, when known.

    The index reads the head of a file only (the attributes, then it stops): a file cut past the bytes it
    read is read from its head, with the values pydicom reads from the whole file.
    """
    expected = reference(data)
    asked = []

    def read_head(_, n):
        asked.append(n)
        return data[:n]

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            record = read_record(read_head, "", first_read)
    except NotDicom as exc:
        reason = str(exc)
        if "truncated" in reason:
            assert cut, f"said truncated, but the file is whole: {reason}"
        elif expected is not None and any(expected[k] for k in IDS):
            pytest.fail(f"pydicom reads {expected}, the index refused it: {reason}")
        return "refused"
    if expected is None and cut and whole is not None and max(asked) < len(data):
        expected = reference(whole)  # cut where the index never read
    assert expected is not None, f"pydicom cannot read it, the index read {record}"
    got = {k: record[k] for k in STORED}
    assert got == expected
    return "read"


# -- pydicom's bundled files and the odd-file cases ---------------------------------------------------------
def bundled() -> list[str]:
    return [p for p in get_testdata_files() if os.path.isfile(p) and os.path.getsize(p) < 8 * 2**20]


def test_pydicom_bundled_files_agree():
    outcomes = {"read": 0, "refused": 0}
    for path in bundled():
        data = Path(path).read_bytes()
        for first_read in (512, 16 * 1024):
            outcomes[check(data, cut=_really_cut(data), first_read=first_read)] += 1
    assert outcomes["read"] > 200 and outcomes["refused"] > 5


def _really_cut(data: bytes) -> bool:
    """pydicom's strict mode finds the data set cut (some bundled files are cut on purpose): reading the
    whole file (Pixel Data too) fails, or an element's value is shorter than its length says."""
    from pydicom import config
    old = config.settings.reading_validation_mode
    config.settings.reading_validation_mode = config.RAISE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            for tag in ds.keys():
                raw = ds.get_item(tag)
                if (isinstance(raw, RawDataElement) and isinstance(raw.value, bytes)
                        and raw.length != 0xFFFFFFFF and len(raw.value) != raw.length):
                    return True
            for _ in ds.iterall():
                pass
        return False
    except Exception:
        return True
    finally:
        config.settings.reading_validation_mode = old


def test_odd_file_cases_agree(tmp_path):
    odd_files.write_all(tmp_path, big_bytes=2**20)
    count = 0
    for folder, _, names in os.walk(os.fsencode(tmp_path)):
        for name in names:
            with open(os.path.join(folder, name), "rb") as fh:
                assert check(fh.read()) == "read"
            count += 1
    assert count == 19


# -- a fuzzed corpus ------------------------------------------------------------------------------------------
NAMES = [("ISO_IR 100", "Müller^Jürgen"), ("ISO_IR 192", "García Márquez^José"), ("ISO_IR 144", "Иванов^Иван"),
         ("ISO_IR 126", "Παπαδόπουλος^Γιώργος"), (None, "DOE^JOHN"), (None, "Łódź^Zoë"),
         ("ISO 2022 IR 6\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎"), ("ISO_IR 100", "O'NEIL^  ")]
INTEGERS = ["1", "1.0", " 7 ", "+3", "-2", "1E2", "2147483647", "2147483648", "-2147483649", "1.5", "",
            "456115117112105110101", "007", "1\\2"]
DATES = ["20240102", "2024.01.02", "20240230", "", "2024-01-02", "19000101", "00000000", " 20240102"]
CHARSET_SPELLINGS = {"ISO_IR 100": [b"ISO_IR 100\0\0", b"ISO-IR 100", b"ISO_IR_100", b"ISO IR 100  ", b"XYZ 1"],
                     "ISO_IR 192": [b"ISO_IR 192\0\0", b"ISO IR 192", b"ISO-IR 192"],
                     "ISO_IR 144": [b"ISO_IR 144\0\0", b"ISO-IR 144"], "ISO_IR 126": [b"ISO_IR 126\0\0"]}
SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian]
OTHER_VRS = {"SeriesNumber": ["IS", "LO", "UN", "SH", "US"], "InstanceNumber": ["IS", "UN", "SL"],
             "StudyDate": ["DA", "LO", "UN"], "PatientName": ["PN", "LO", "UN"], "SeriesInstanceUID": ["UI", "UN", "LO"],
             "Modality": ["CS", "SH", "UN"]}


@st.composite
def headers(draw):
    charset, name = draw(st.sampled_from(NAMES))
    ds = odd_files.base("1.2.3.99.1", draw(st.sampled_from(["1.2.3.99.1.1", None])), "1.2.3.99.1.1.1",
                        PatientName=name, SpecificCharacterSet=charset, SeriesNumber=draw(st.sampled_from(INTEGERS)),
                        InstanceNumber=draw(st.sampled_from(INTEGERS)), StudyDate=draw(st.sampled_from(DATES)),
                        PatientBirthDate=draw(st.sampled_from(DATES)),
                        StudyDescription=draw(st.sampled_from(["CHEST", " Thorax ", "", "A\\B", name.split("^")[0]])))
    syntax = draw(st.sampled_from(SYNTAXES))
    if syntax != ImplicitVRLittleEndian:
        keyword = draw(st.sampled_from(sorted(OTHER_VRS)))
        vr = draw(st.sampled_from(OTHER_VRS[keyword]))
        _set_vr(ds, keyword, vr, little=syntax != ExplicitVRBigEndian)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        odd_files.save_to(buffer, ds, syntax)
    data = buffer.getvalue()
    cut, whole = False, None
    if syntax == ExplicitVRLittleEndian:  # byte-level mutations of the usual file
        mutation = draw(st.sampled_from(["none", "meta length", "charset", "element length", "truncate",
                                         "padding"]))
        if mutation == "meta length":
            declared = struct.unpack_from("<I", data, 140)[0] + draw(st.sampled_from([-2, -1, 1, 2, 7]))
            data = data[:140] + struct.pack("<I", declared) + data[144:]
        elif mutation == "charset" and charset in CHARSET_SPELLINGS:
            data = _patch(data, b"\x08\x00\x05\x00CS", draw(st.sampled_from(CHARSET_SPELLINGS[charset])))
        elif mutation == "element length":
            tag = draw(st.sampled_from([b"\x08\x00\x60\x00CS", b"\x10\x00\x10\x00", b"\x20\x00\x11\x00",
                                        b"\x08\x00\x30\x10LO"]))
            at = data.find(tag)
            if at > 0:
                length = struct.unpack_from("<H", data, at + 6)[0]
                new = max(0, length + draw(st.integers(-4, 4000)))
                data = data[:at + 6] + struct.pack("<H", new) + data[at + 8:]
                cut = True  # it may now claim bytes past the end of the file
        elif mutation == "padding":  # bytes after Pixel Data, as some writers leave: the file is whole
            data += b"\0" * draw(st.integers(1, 12))
        elif mutation == "truncate":
            data, whole = data[:draw(st.integers(0, len(data) - 1))], data
            cut = True
    return data, cut, whole


def _set_vr(ds, keyword: str, vr: str, little: bool) -> None:
    """Write the element `keyword` with another VR (as some writers do)."""
    if keyword not in ds:
        return
    element = ds[keyword]
    value = element.value
    if isinstance(value, bytes):
        text = value.decode("latin-1")
    elif isinstance(value, MultiValue):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value)
    if vr in ("US", "SL"):
        try:
            number = int(text)
        except ValueError:
            return
        if not (0 <= number < 2**16 if vr == "US" else -(2**31) <= number < 2**31):
            return
        new = number
    elif vr == "UN":
        encodings = pydicom.charset.convert_encodings(ds.get("SpecificCharacterSet") or "")
        raw = pydicom.charset.encode_string(text, encodings) if element.VR in ("PN", "LO", "SH") else \
            text.encode("latin-1", "replace")
        new = raw + (b" " if len(raw) % 2 else b"")
        if not little and element.VR not in ("PN", "LO", "SH", "CS", "UI", "IS", "DA"):
            return
    else:
        new = text
    del ds[keyword]
    ds.add_new(element.tag, vr, new)


def _patch(data: bytes, find: bytes, new: bytes) -> bytes:
    at = data.find(find)
    if at < 0:
        return data
    old = struct.unpack_from("<H", data, at + 6)[0]
    new += b" " if len(new) % 2 else b""
    return data[:at + 6] + struct.pack("<H", len(new)) + new + data[at + 8 + old:]


def _cut_in_pixel_data(extra: int, **kw) -> tuple[bytes, bool, bytes]:
    """A whole file cut `extra` bytes into the header of its Pixel Data (7FE0,0010): (cut, True, whole)."""
    buffer = io.BytesIO()
    odd_files.save_to(buffer, odd_files.base("1.2.3.99.1", kw.pop("series", "1.2.3.99.1.1"), "1.2.3.99.1.1.1",
                                             **kw), ExplicitVRLittleEndian)
    data = buffer.getvalue()
    return data[:data.index(b"\xe0\x7f\x10\x00OW") + extra], True, data


SHORT = {"series": None, "StudyDescription": "", "StudyDate": "", "PatientBirthDate": "", "SeriesNumber": "1"}


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers(), st.sampled_from([256, 1024, 16 * 1024]))
# found by hypothesis: a whole file that ends within the Pixel Data header ('OW', no 4-byte length)
@example(_cut_in_pixel_data(8), 16 * 1024)
@example(_cut_in_pixel_data(10), 256)
# ... the same, past the bytes the index reads (its attributes end within the first 512 bytes)
@example(_cut_in_pixel_data(8, **SHORT), 256)
def test_fuzzed_headers_agree(generated, first_read):
    data, cut, whole = generated
    check(data, cut=cut, first_read=first_read, whole=whole)
