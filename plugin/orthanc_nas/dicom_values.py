"""The values the index stores, read by their Value Representation (PS3.5 6.2) as the standard says.

Each reader takes the raw bytes of one element and gives the value the index keeps, or None when the
value is absent or cannot be read as its VR (the file is still indexed). Whatever a writer put there,
the result is an `int` within the range of its VR, or a `str` without padding: nothing that SQLite
(or a JSON answer) could refuse.

- IS (PS3.5 Table 6.2-1): an integer in −2³¹…2³¹−1. `1.0`, `+1` and ` 1 ` are 1 (pydicom reads such
  values too); `1.5`, `1E19` or 21 digits are not integers of that range: None.
- DA: stored `YYYYMMDD`, a real date; the form `YYYY.MM.DD` of the standard before V3.0, which readers
  are asked to accept (PS3.5 Table 6.2-1, DA), is read too. Anything else: None.
- TM: stored `HHMMSS.FFFFFF` (as far as given); `HH:MM:SS.frac` of the standard before V3.0 too.
- CS, UI (and the ASCII side of DA, TM, IS): ISO 646 text, padded with spaces (UI: a NUL byte).
- PN, LO, SH: decoded with the file's SpecificCharacterSet, exactly as pydicom decodes them.

Multi-valued elements give their first value. Leading and trailing spaces and NULs are padding
(PS3.5 6.2: insignificant for these VRs), so they go.
"""

from __future__ import annotations

import datetime
import functools
import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation

from pydicom.charset import convert_encodings
from pydicom.valuerep import PersonName
from pydicom.values import convert_PN, convert_string, convert_text

INT_MIN, INT_MAX = -2**31, 2**31 - 1  # IS: PS3.5 Table 6.2-1
PADDING = " \0"

_DATE = re.compile(r"(\d{4})\.?(\d{2})\.?(\d{2})")
_TIME = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(\.\d{1,6})?)?)?")


def _first(text: str) -> str:
    if "\\" in text:
        text = text.split("\\", 1)[0]
    return text.strip(PADDING)


def _ascii(data: bytes) -> str:
    # pydicom reads these VRs with its default encoding (Latin-1): every byte is a character
    return data.decode("latin-1")


def integer(text: str) -> int | None:
    """An IS value from its text, or None when it is not an integer within −2³¹…2³¹−1."""
    text = _first(text)
    if not text:
        return None
    try:
        number = int(text)
    except ValueError:
        try:
            exact = Decimal(text)
        except InvalidOperation:
            return None
        if not exact.is_finite() or exact != exact.to_integral_value():
            return None
        number = int(exact)
    return number if INT_MIN <= number <= INT_MAX else None


def date(text: str) -> str | None:
    """A DA value as `YYYYMMDD` (also from the legacy `YYYY.MM.DD`), or None when it is no date."""
    text = _first(text)
    if not (len(text) == 8 and text.isdigit() and text.isascii()):  # the usual form, without a regex
        match = _DATE.fullmatch(text)
        if match is None or len(text) != 10:
            return None
        text = "".join(match.groups())
    try:
        datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None
    return text


def time(text: str) -> str | None:
    """A TM value as `HHMMSS.FFFFFF` (as much as given; also from the legacy `HH:MM:SS.frac`), or None."""
    match = _TIME.fullmatch(_first(text))
    if match is None:
        return None
    hours, minutes, seconds, fraction = match.groups()
    if int(hours) > 23 or (minutes and int(minutes) > 59) or (seconds and int(seconds) > 60):
        return None
    return "".join(part for part in (hours, minutes, seconds, fraction) if part)


def code(text: str) -> str | None:
    """A CS or UI value: the first value, without padding."""
    return _first(text) or None


def text_value(value) -> str | None:
    """A decoded text value (str, PersonName or a multi-value of them): the first, without padding."""
    if value is None:
        return None
    if not isinstance(value, str | PersonName):
        value = value[0] if len(value) else ""
    return str(value).strip(PADDING) or None


def guess_encodings(value: bytes) -> list[str]:
    """No SpecificCharacterSet: the standard says ASCII, but many exports write UTF-8 without declaring
    it. Bytes that are valid UTF-8 are read as such, anything else as Latin-1 (pydicom's default)."""
    try:
        value.decode("utf-8")
        return ["UTF8"]
    except UnicodeDecodeError:
        return ["iso8859"]


@functools.lru_cache(maxsize=256)  # an archive holds a handful of distinct values
def character_sets(data: bytes) -> tuple[str, ...] | None:
    """Python codecs of a SpecificCharacterSet value as pydicom reads it (NUL and space padding, known
    misspellings such as `ISO-IR 100`); None when the file declares none."""
    value = convert_string(data, True)
    terms = [value] if isinstance(value, str) else list(value)
    if not any(t.strip(PADDING) for t in terms):
        return None
    return tuple(convert_encodings(terms))


# -- readers of raw bytes, by VR ------------------------------------------------------------------
Reader = Callable[[bytes, Sequence[str] | None], "str | int | None"]


def _read_pn(data: bytes, encodings) -> str | None:
    return text_value(convert_PN(data, list(encodings or guess_encodings(data))))


def _read_text(data: bytes, encodings) -> str | None:
    return text_value(convert_text(data, list(encodings or guess_encodings(data))))


READERS: dict[str, Reader] = {
    "IS": lambda data, _: integer(_ascii(data)),
    "DA": lambda data, _: date(_ascii(data)),
    "TM": lambda data, _: time(_ascii(data)),
    "CS": lambda data, _: code(_ascii(data)),
    "UI": lambda data, _: code(_ascii(data)),
    "PN": _read_pn,
    "LO": _read_text,
    "SH": _read_text,
}


def from_python(vr: str, value) -> str | int | None:
    """The stored value of an element pydicom has already converted (an element written with another
    VR than the dictionary's, read by pydicom by the VR it has; and the reference of the tests)."""
    if value is None or isinstance(value, bytes | bytearray):
        return None
    if not isinstance(value, str | PersonName | int | float | Decimal | datetime.date | datetime.time):
        try:
            value = value[0] if len(value) else None  # a multi-value: its first
        except TypeError:
            return None  # a sequence or anything else that is no single value
        if value is None:
            return None
    if vr == "IS":
        if isinstance(value, bool):
            return None
        if isinstance(value, int | float | Decimal):
            try:
                exact = Decimal(value)
            except (InvalidOperation, ValueError):
                return None
            return integer(str(exact)) if exact.is_finite() else None
        return integer(str(value))
    if vr == "DA":
        if isinstance(value, datetime.date):
            return f"{value.year:04d}{value.month:02d}{value.day:02d}"
        return date(str(value))
    if vr == "TM":
        return time(getattr(value, "original_string", None) or str(value))
    if isinstance(value, str | PersonName):
        return text_value(value)
    return text_value(str(value))
