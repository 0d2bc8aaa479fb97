"""A catalog of made-up series with hostile text, and a brute-force answer to any search over it.

`catalog_series` draws a few hundred series whose searched fields hold what could confuse the engines'
text indexes: FTS5 query syntax, LIKE wild cards, terms of every length, non-ASCII letters that fold
(combining marks, `ß`, final sigma, compatibility forms), CJK, emoji, very long and empty values.
`oracle` answers a search the slow, obvious way the spec states it (SPEC.md, "Search"): every folded
term a substring of one folded field, filters, the order StudyDate newest first, PatientName (folded),
SeriesNumber, then series_key, like `search._ORDER`.
"""

from __future__ import annotations

import random

from orthanc_nas.catalog import series_key
from orthanc_nas.catalog_migrations import SEARCHED_FIELDS
from orthanc_nas.normalize import fold
from orthanc_nas.search import SearchParams

UID = "1.2.826.0.1.3680043.2.1125.4242"

FRAGMENTS = [
    '"', '""', 'a"b', '"doe"', "*", "abc*", "^", "DOE^JOHN", ":", "col:val", "search_text:thorax", "(", ")",
    "(abc)", "-", "a-b", "-x", "+", "c++", "AND", "OR", "NOT", "NEAR", "NEAR(a b)", "and or not", "{a b}",
    "%", "_", "\\", "100%_low", "a_b", "C:\\dir\\x", "\\%", "%_\\", "50%", "[x]", "'", "o'brien",
    "Müller", "MÜLLER", "Mu\u0308ller", "García Márquez", "Ørsted", "Straße", "STRASSE", "ΟΔΥΣΣΕΥΣ",
    "Οδυσσεύς", "ς", "σς", "山田^太郎", "山田", "ﾀﾞｲｽｹ", "ダイスケ", "😀🫀", "x😀y", "ﬁle", "İstanbul",
    "Łódź", "ǅ", "Å", "A\u030a", "ﷺ", "①②", "x", "ab", "abc", "thorax", "CT THORAX", "PID-0042", "0042",
    "a" * 70, "lorem ipsum " * 40, "é" * 300,
]
MODALITIES = ["CT", "MR", "CR", "OT", None]
DATES = ["20240301", "20240302", "20230115", "20220610", "19991231", None]


def _value(rng: random.Random) -> str | None:
    """One field: None, empty, blank, or one to three fragments joined by a separator."""
    roll = rng.random()
    if roll < 0.06:
        return None
    if roll < 0.09:
        return rng.choice(["", "   "])
    parts = [rng.choice(FRAGMENTS) for _ in range(rng.randint(1, 3))]
    return rng.choice([" ", "^", "", "-", "="]).join(parts)


def catalog_series(count: int = 300, seed: int = 9) -> list[dict]:
    """`count` series' attributes (one dict each, with a distinct SeriesInstanceUID, or none for a few)."""
    rng = random.Random(seed)
    made = []
    for n in range(count):
        attrs = {field: _value(rng) for field in SEARCHED_FIELDS}
        attrs.update(StudyInstanceUID=f"{UID}.{n // 3}", StudyDate=rng.choice(DATES), Modality=rng.choice(MODALITIES),
                     SeriesNumber=rng.choice([None, 1, 2, 3, 10, -1]))
        if n % 17:  # the others are grouped by study and number
            attrs["SeriesInstanceUID"] = f"{UID}.{n // 3}.{n}"
        made.append(attrs)
    return made


def files_of(series: list[dict], tag: str = "") -> list[tuple[str, dict]]:
    """Two files for each series, as `tests.support.series.write` takes them."""
    from tests.support.series import record

    return [(f"s{n}{tag}/{i}.dcm", record(**attrs, SOPInstanceUID=f"{UID}.{n}.{i}{tag}", InstanceNumber=i))
            for n, attrs in enumerate(series) for i in (1, 2)]


def stored_series(files: list[tuple[str, dict]]) -> dict[str, dict]:
    """What the index holds for files written in this order: each series' key and last written attributes
    (text values lose their NULs, SPEC.md "Values read from files")."""
    found: dict[str, dict] = {}
    for path, rec in files:
        values = {k: v.replace("\0", "") if isinstance(v, str) else v for k, v in rec.items()}
        found[series_key(rec, path)] = values
    return found


def oracle(series: dict[str, dict], params: SearchParams) -> tuple[int, list[str]]:
    """The total and the page's series keys of a search, worked out field by field."""
    def matches(attrs: dict) -> bool:
        folded = [fold(attrs.get(field)) for field in SEARCHED_FIELDS]
        date = attrs.get("StudyDate")
        return (all(any(term in text for text in folded) for term in params.terms)
                and (params.modality is None or attrs.get("Modality") == params.modality)
                and (params.date_from is None or (date is not None and date >= params.date_from))
                and (params.date_to is None or (date is not None and date <= params.date_to)))

    found = sorted(key for key, attrs in series.items() if matches(attrs))  # series_key last
    found.sort(key=lambda k: (series[k]["SeriesNumber"] is not None, series[k]["SeriesNumber"] or 0))
    found.sort(key=lambda k: fold(series[k]["PatientName"]))
    found.sort(key=lambda k: (series[k]["StudyDate"] is not None, series[k]["StudyDate"] or ""), reverse=True)
    return len(found), found[params.offset:params.offset + params.limit]


def queries(series: dict[str, dict], count: int = 150, seed: int = 4) -> list[dict[str, str]]:
    """Raw queries for `SearchParams.parse`: each fragment alone, then `count` drawn ones: terms cut from
    stored values (so most find something), fragments, words found nowhere, with filters and pages, deep
    ones too."""
    rng = random.Random(seed)
    texts = [fold(attrs.get(field)) for attrs in series.values() for field in SEARCHED_FIELDS]
    texts = [t for t in texts if t]
    made = [{"q": fragment} for fragment in FRAGMENTS]  # each as it is, first
    for _ in range(count):
        words = []
        for _ in range(rng.choice([0, 1, 1, 1, 2, 2, 3])):
            kind = rng.random()
            if kind < 0.55:
                text = rng.choice(texts)
                size = rng.choice([1, 2, 3, 3, 4, 5, 8, 20, len(text)])
                start = rng.randrange(max(1, len(text) - size + 1))
                words.append(text[start:start + size])
            elif kind < 0.85:
                words.append(rng.choice(FRAGMENTS))
            else:
                words.append(rng.choice(["zzzq", "qq", "nobody", '"*', "NEAR(", "%%", "^^"]))
        word = " ".join(words)
        if rng.random() < 0.3:  # the user's case, not the index's
            word = word.upper()
        query = {"q": word}
        if rng.random() < 0.25:
            query["modality"] = rng.choice(["CT", "mr", "OT", "XA"])
        if rng.random() < 0.2:
            query["date_from"] = rng.choice(["20230101", "20240301", "19000101"])
        if rng.random() < 0.15:
            query["date_to"] = rng.choice(["20240301", "20231231", "29991231"])
        if query.get("date_from", "") > query.get("date_to", "99999999"):
            del query["date_to"]
        query["limit"] = str(rng.choice([1, 2, 7, 50, 100, 1000]))
        query["offset"] = str(rng.choice([0, 0, 0, 1, 5, 40, 120, 299, 599, 600, 10**9]))
        made.append(query)
    return made
