"""Values by their VR (PS3.5 6.2): what the index stores from what a writer put in an element."""

from __future__ import annotations

import datetime

import pytest
from pydicom.valuerep import DA, IS, PersonName

from orthanc_nas.dicom_values import READERS, character_sets, from_python


@pytest.mark.parametrize("raw, stored", [
    (b"1", 1), (b"1.0", 1), (b" 1 ", 1), (b"+3", 3), (b"-2 ", -2), (b"007", 7), (b"1\\2", 1), (b"1.000", 1),
    (b"2147483647", 2**31 - 1), (b"-2147483648", -(2**31)),
    (b"2147483648", None), (b"1E19", None), (b"456115117112105110101 ", None), (b"1.5", None),
    (b"", None), (b"  ", None), (b"abc", None), (b"NaN", None), (b"Infinity", None), (b"1\0", 1),
])
def test_integer_strings(raw, stored):
    assert READERS["IS"](raw, None) == stored


@pytest.mark.parametrize("raw, stored", [
    (b"20240102", "20240102"), (b"2024.01.02", "20240102"), (b"20240102 ", "20240102"), (b"20240102\0", "20240102"),
    (b"20240230", None), (b"00000000", None), (b"2024-01-02", None), (b"2024", None), (b"", None),
    (b"20240102\\20240103", "20240102"), (b"2024.0102", None),
])
def test_dates(raw, stored):
    assert READERS["DA"](raw, None) == stored


def test_dates_compare_as_dates():
    legacy, modern = READERS["DA"](b"2023.12.31", None), READERS["DA"](b"20240101", None)
    assert legacy < modern


@pytest.mark.parametrize("raw, stored", [
    (b"101530", "101530"), (b"10:15:30", "101530"), (b"101530.123456", "101530.123456"), (b"10:15:30.5", "101530.5"),
    (b"10", "10"), (b"1015", "1015"), (b"251530", None), (b"106030", None), (b"abc", None), (b"", None),
])
def test_times(raw, stored):
    assert READERS["TM"](raw, None) == stored


@pytest.mark.parametrize("vr, raw, stored", [
    ("CS", b"CT ", "CT"), ("CS", b" CT\0", "CT"), ("CS", b"CT\\MR", "CT"), ("UI", b"1.2.3\0", "1.2.3"),
    ("UI", b"", None), ("LO", b" Thorax  ", "Thorax"), ("SH", b"A\\B", "A"), ("PN", b"DOE^JOHN\0", "DOE^JOHN"),
])
def test_padding_goes(vr, raw, stored):
    assert READERS[vr](raw, None) == stored


@pytest.mark.parametrize("raw, codecs", [
    (b"ISO_IR 144\0\0", ["iso_ir_144"]), (b"ISO_IR 192 ", ["UTF8"]), (b"ISO-IR 100", ["latin_1"]),
    (b"ISO IR 192", ["UTF8"]), (b"\\ISO 2022 IR 87", ["iso8859", "iso2022_jp"]), (b"", None), (b"\0\0", None),
])
def test_character_sets_as_pydicom_reads_them(raw, codecs):
    assert character_sets(raw) == (tuple(codecs) if codecs else None)


def test_a_nul_padded_character_set_decodes_the_names():
    name = "Иванов^Иван".encode("iso8859_5")
    assert READERS["PN"](name, character_sets(b"ISO_IR 144\0\0")) == "Иванов^Иван"


@pytest.mark.parametrize("vr, value, stored", [
    ("IS", IS("7"), 7), ("IS", 1.0, 1), ("IS", 1.5, None), ("IS", 2**40, None), ("IS", True, None),
    ("IS", "x", None), ("DA", DA("20240102"), "20240102"), ("DA", datetime.date(999, 1, 2), "09990102"),
    ("DA", "2024.01.02", "20240102"), ("PN", PersonName("DOE^JOHN "), "DOE^JOHN"), ("LO", ["A ", "B"], "A"),
    ("LO", [], None), ("LO", b"raw", None), ("TM", datetime.time(10, 15, 30), "101530"),
])
def test_values_pydicom_converted(vr, value, stored):
    assert from_python(vr, value) == stored
