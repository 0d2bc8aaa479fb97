"""Folding text for search: what a radiologist types against what a header holds.

`fold` makes text case- and accent-insensitive: compatibility decomposition
(NFKD, so `ﬁ` is `fi` and half-width katakana are full-width), combining marks
dropped (`é` is `e`, `Ä` is `a`, Greek tonos goes), case folded (`ß` is `ss`,
final `ς` is `σ`), a few letters that carry their "accent" in the letter
itself mapped to their base (`ø`→`o`, `æ`→`ae`, `ł`→`l`, …: NFKD leaves them
whole, yet a user types `soren` for `Søren` and `lodz` for `Łódź`), and the
DICOM person name delimiters `^` (components) and `=` (alphabetic,
ideographic, phonetic groups) counted as spaces. Whitespace is collapsed to
one space.

Japanese voicing marks (゛ ゜) are combining marks, but dropping them would
make だ and た the same letter, so they are kept and recomposed (NFC): half-width
`ﾀﾞ` and full-width `ダ` both fold to `ダ`. Hangul is recomposed the same way.

The same function folds the stored fields (once, when a series is written) and
the query terms, so both sides always agree.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

#: joins the folded fields of a series in its search text; a term never contains it
#: (terms are split on whitespace), so no term can match across two fields
FIELD_SEPARATOR = "\n"

_KANA_VOICING = {"\u3099", "\u309a"}

# Letters NFKD does not decompose, folded to what people type on a plain keyboard.
_BASE_LETTERS = str.maketrans({
    "ø": "o", "æ": "ae", "œ": "oe", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ħ": "h",
    "ı": "i", "ŀ": "l", "ŧ": "t", "ĸ": "k",
    "^": " ", "=": " ",
})


def fold(text: str | None) -> str:
    """Fold one value for search: lower case, no accents, `^` and `=` as spaces, single spaces."""
    if not text:
        return ""
    # Case first: it turns the Greek iota subscript into the letter iota, as upper case writes it
    # (ᾳ, ΑΙ), and it gives `İ` a combining dot that then goes with the other marks.
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    kept = "".join(c for c in decomposed if unicodedata.category(c) != "Mn" or c in _KANA_VOICING)
    # and again: a few compatibility characters decompose into upper-case letters (ℌ → H)
    folded = unicodedata.normalize("NFC", kept).casefold().translate(_BASE_LETTERS)
    return " ".join(folded.split())


def terms(query: str | None) -> list[str]:
    """The distinct folded terms of a query, in the order typed."""
    return list(dict.fromkeys(fold(query).split()))


def search_text(values: Iterable[str | None]) -> str:
    """The text a series is searched in: its folded fields, one per line."""
    return FIELD_SEPARATOR.join(fold(v) for v in values)
