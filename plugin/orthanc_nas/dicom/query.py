"""C-FIND from the index: one identifier becomes one SQL query over `series` (and `files` at IMAGE level).

Matching follows PS3.4 C.2.2.2: an empty key is universal matching (a return key only); a UID key with
several values is list matching (C.2.2.2.2); `*` and `?` are wild cards (C.2.2.2.4), never in UIDs, dates
or times; `a-b`, `a-` and `-b` are ranges of dates (DA) and times (TM) (C.2.2.2.5); anything else is
single value matching (C.2.2.2.1), case-sensitive except for person names (PN), which are matched
case-insensitively (as C.2.2.2.1.1 allows). An entity without the attribute matches only universal
matching. Computed keys: `ModalitiesInStudy` (returned, and matched as a list of modalities) and the
`NumberOf…Related…` counts (returned only).

Every query reads `series` rows through the indexes of migration 4 or, at IMAGE level, the files of the
matching series (`files_by_series`) or of the given SOP Instance UIDs (`files_by_sop`): never a scan of
every file row. Answers are in UTF-8 (`ISO_IR 192`).

The SQL runs on SQLite or PostgreSQL (the index's engine, `store`): wild cards, folding, times and the
list of modalities are written by the connection's `store_dialects.Dialect`; on SQLite, `prepare` adds the Python
functions they use.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .. import store_dialects
from ..errors import DICOM_OUT_OF_RESOURCES, NasError

PATIENT, STUDY, SERIES, IMAGE = "PATIENT", "STUDY", "SERIES", "IMAGE"
LEVELS = (PATIENT, STUDY, SERIES, IMAGE)
CHARSET = "ISO_IR 192"
#: the unique key of each level (PS3.4 C.6.1.1, C.6.2.1)
UNIQUE_KEYS = {PATIENT: "PatientID", STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID",
               IMAGE: "SOPInstanceUID"}


class QueryError(Exception):
    """An identifier the node cannot answer; `status` is the C-FIND/C-MOVE/C-GET failure status."""

    def __init__(self, message: str, status: int = 0xA900):  # A900: identifier does not match SOP class
        super().__init__(message)
        self.status = status


#: C-MOVE and C-GET have no plain "Refused: Out of Resources": before any sub-operation, theirs is "Unable
#: to calculate number of matches" (PS3.4 C.4.2.1.5, C.4.3.1.4)
_RETRIEVE_STATUS = {DICOM_OUT_OF_RESOURCES: 0xA701}


def failure(exc: NasError, *, retrieve: bool = False) -> Dataset:
    """The status of a C-FIND (or, `retrieve`, a C-MOVE/C-GET) that `exc` ends: Status (0000,0900), the
    error's DICOM status (`NasError.dicom_status`), and Error Comment (0000,0902), what a person can do."""
    status = Dataset()
    status.Status = _RETRIEVE_STATUS.get(exc.dicom_status, exc.dicom_status) if retrieve else exc.dicom_status
    status.ErrorComment = exc.error_comment()
    return status


@dataclass(frozen=True, slots=True)
class Key:
    """An attribute the index holds: its level, its SQL column and its value representation."""

    level: str
    column: str
    vr: str


KEYS: dict[str, Key] = {
    "PatientName": Key(PATIENT, "s.PatientName", "PN"),
    "PatientID": Key(PATIENT, "s.PatientID", "LO"),
    "PatientBirthDate": Key(PATIENT, "s.PatientBirthDate", "DA"),
    "PatientSex": Key(PATIENT, "s.PatientSex", "CS"),
    "StudyInstanceUID": Key(STUDY, "s.StudyInstanceUID", "UI"),
    "StudyDate": Key(STUDY, "s.StudyDate", "DA"),
    "StudyTime": Key(STUDY, "s.StudyTime", "TM"),
    "AccessionNumber": Key(STUDY, "s.AccessionNumber", "SH"),
    "StudyID": Key(STUDY, "s.StudyID", "SH"),
    "StudyDescription": Key(STUDY, "s.StudyDescription", "LO"),
    "ReferringPhysicianName": Key(STUDY, "s.ReferringPhysicianName", "PN"),
    "InstitutionName": Key(STUDY, "s.InstitutionName", "LO"),
    "SeriesInstanceUID": Key(SERIES, "s.SeriesInstanceUID", "UI"),
    "Modality": Key(SERIES, "s.Modality", "CS"),
    "SeriesNumber": Key(SERIES, "s.SeriesNumber", "IS"),
    "SeriesDescription": Key(SERIES, "s.SeriesDescription", "LO"),
    "BodyPartExamined": Key(SERIES, "s.BodyPartExamined", "CS"),
    "SOPInstanceUID": Key(IMAGE, "f.SOPInstanceUID", "UI"),
    "SOPClassUID": Key(IMAGE, "f.SOPClassUID", "UI"),
    "InstanceNumber": Key(IMAGE, "f.InstanceNumber", "IS"),
}
#: computed return keys: keyword -> (level, SQL over the level's series rows)
COMPUTED: dict[str, tuple[str, str]] = {
    "NumberOfPatientRelatedStudies": (PATIENT, "count(DISTINCT s.StudyInstanceUID)"),
    "NumberOfPatientRelatedSeries": (PATIENT, "count(*)"),
    "NumberOfPatientRelatedInstances": (PATIENT, "CAST(sum(s.file_count) AS BIGINT)"),
    "ModalitiesInStudy": (STUDY, "{modalities}"),
    "NumberOfStudyRelatedSeries": (STUDY, "count(*)"),
    "NumberOfStudyRelatedInstances": (STUDY, "CAST(sum(s.file_count) AS BIGINT)"),
    "NumberOfSeriesRelatedInstances": (SERIES, "s.file_count"),
}
#: series that a DICOM peer can address: with study and series UIDs
_ADDRESSABLE = "s.StudyInstanceUID IS NOT NULL AND s.SeriesInstanceUID IS NOT NULL"
_GROUP = {PATIENT: "s.PatientID", STUDY: "s.StudyInstanceUID"}
_NOT_KEYS = {"QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle"}


def fold_name(value: str | None) -> str | None:
    """A person name for case-insensitive matching (SQL function `nas_fold`)."""
    return value.casefold() if value is not None else None


def time_value(value: str | None) -> str | None:
    """A TM value as `HHMMSS.FFFFFF` so that times compare as text (SQL function `nas_tm`).

    The legacy form with colons (`10:15:00`, PS3.5 6.2 note) is read too.
    """
    if not value:
        return None
    whole, _, fraction = value.strip().replace(":", "").partition(".")
    return f"{whole.ljust(6, '0')[:6]}.{fraction.ljust(6, '0')[:6]}"


def prepare(conn):
    """Add the node's SQL functions to a connection of the index (SQLite; PostgreSQL needs none)."""
    if store_dialects.dialect(conn) is not store_dialects.SQLITE_DIALECT:
        return conn
    conn.create_function("nas_fold", 1, fold_name, deterministic=True)
    conn.create_function("nas_tm", 1, time_value, deterministic=True)
    return conn


@dataclass
class Query:
    """An identifier turned into SQL: its level, conditions and the keys to answer."""

    level: str
    #: the non-empty matching keys: (keyword, values), turned into SQL by `sql` in the engine's dialect
    matches: list[tuple[str, list[str]]] = field(default_factory=list)
    #: (keyword or None, tag, VR) of every key of the identifier, in its order
    wanted: list[tuple[str | None, int, str]] = field(default_factory=list)
    #: the non-empty matching keys, for the audit: keyword -> value as text
    keys: dict[str, str] = field(default_factory=dict)

    def depth(self) -> int:
        return LEVELS.index(self.level)


def _values(value) -> list[str]:
    """An element's value as a list of texts; [] for an empty value."""
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value if str(v) != ""]
    return [str(value)]


def _condition(key: Key, values: list[str], dialect: store_dialects.Dialect) -> tuple[str, list] | None:
    """The SQL condition of one non-empty key (PS3.4 C.2.2.2), None for universal matching."""
    column, vr = key.column, key.vr
    if vr == "UI":  # single value or list of UIDs (C.2.2.2.2)
        return f"{column} IN ({','.join('?' * len(values))})", values
    if vr in ("DA", "TM"):
        value = values[0].strip()
        if vr == "DA":
            value, norm = value.replace(".", ""), (lambda v: v)
        else:
            column, norm = dialect.time_value(column), time_value
        if "-" in value:  # range matching (C.2.2.2.5)
            low, _, high = value.partition("-")
            parts, args = [], []
            if low.strip():
                parts.append(f"{column} >= ?")
                args.append(norm(low.strip()))
            if high.strip():
                parts.append(f"{column} <= ?")
                args.append(norm(high.strip()))
            return (" AND ".join(parts), args) if parts else None
        return f"{column} = ?", [norm(value)]
    if vr == "IS":
        try:
            return f"{column} = ?", [int(values[0].strip())]
        except ValueError:
            return "1 = 0", []
    if vr == "PN":
        column = dialect.fold_name(column)
        values = [dialect.fold_value(v) for v in values]
    parts, args = [], []
    for value in values:
        if value.strip("*") == "" and "*" in value:
            return None  # `*` alone: universal matching (C.2.2.2.4)
        if "*" in value or "?" in value:
            clause, arg = dialect.glob(column, value)
            parts.append(clause)
            args.append(arg)
        else:
            parts.append(f"{column} = ?")
            args.append(value if vr == "PN" else value.rstrip(" "))
    return "(" + " OR ".join(parts) + ")", args


def parse(identifier: Dataset, *, patient_root: bool, retrieve: bool = False) -> Query:
    """The query of a C-FIND (or the selection of a C-MOVE/C-GET) identifier.

    Raises `QueryError` for a missing or unknown QueryRetrieveLevel, PATIENT level in the Study Root model,
    or an IMAGE level query without a series or instance UID.
    """
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS:
        raise QueryError(f"QueryRetrieveLevel must be one of {', '.join(LEVELS)}, not {level!r}")
    if level == PATIENT and not patient_root:
        raise QueryError("the Study Root model has no PATIENT level")
    query = Query(level)
    for elem in identifier:
        keyword = elem.keyword or None
        if keyword in _NOT_KEYS or elem.tag.group == 0x0002:
            continue
        vr = elem.VR if elem.VR in _PLAIN_VRS else _VR.get(keyword) or _dictionary_vr(elem.tag) or elem.VR
        query.wanted.append((keyword, int(elem.tag), vr))
        if elem.VR == "SQ":
            continue
        values = _values(elem.value)
        if not values:
            continue
        key = KEYS.get(keyword)
        if not (key is not None and LEVELS.index(key.level) <= query.depth()
                or keyword == "ModalitiesInStudy" and level == STUDY):
            continue  # a key the node does not match on: returned empty
        query.keys[keyword] = "\\".join(values)
        query.matches.append((keyword, values))
    if level == IMAGE and not retrieve and not ({"SeriesInstanceUID", "SOPInstanceUID"} & set(query.keys)):
        raise QueryError("an IMAGE level query needs SeriesInstanceUID or SOPInstanceUID")
    return query


_PLAIN_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UI", "UT", "SQ", "UL",
              "US"}
_VR = {keyword: key.vr for keyword, key in KEYS.items()} | {
    "ModalitiesInStudy": "CS", **{k: "IS" for k in COMPUTED if k.startswith("NumberOf")}}


def _dictionary_vr(tag) -> str | None:
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return vr if vr in _PLAIN_VRS else None


def _conditions(query: Query, dialect: store_dialects.Dialect) -> tuple[list[str], list]:
    """The SQL conditions of a query's matching keys and their arguments."""
    where, params = [], []
    for keyword, values in query.matches:
        if keyword == "ModalitiesInStudy":
            condition = (dialect.modalities_in_study.format(marks=",".join("?" * len(values))), values)
        else:
            condition = _condition(KEYS[keyword], values, dialect)
        if condition is not None:
            where.append(condition[0])
            params.extend(condition[1])
    return where, params


def sql(query: Query, dialect: store_dialects.Dialect = store_dialects.SQLITE_DIALECT) -> tuple[str, list]:
    """The SELECT of a query in `dialect` (`store_dialects.dialect(conn)`): one row per answer, columns named by
    keyword."""
    depth = query.depth()
    conditions, params = _conditions(query, dialect)
    where = " AND ".join([_ADDRESSABLE, *conditions])
    columns = [f"{key.column} AS {kw}" for kw, key in KEYS.items() if LEVELS.index(key.level) <= depth]
    modalities = dialect.group_concat("s.Modality")
    computed = [f"{expr.format(modalities=modalities)} AS {kw}" for kw, (level, expr) in COMPUTED.items()
                if level == query.level]
    if query.level in _GROUP:
        group = _GROUP[query.level]
        own = [f"max({key.column}) AS {kw}" for kw, key in KEYS.items()
               if LEVELS.index(key.level) <= depth and key.column != group]
        return (f"SELECT {group} AS {UNIQUE_KEYS[query.level]}, {', '.join(own + computed)} FROM series s "
                f"WHERE {_ADDRESSABLE} AND {group} IN (SELECT {group} FROM series s WHERE {where}) "
                f"GROUP BY {group} ORDER BY {group}"), params
    if query.level == SERIES:
        return (f"SELECT {', '.join(columns + computed)} FROM series s WHERE {where} "
                "ORDER BY s.StudyInstanceUID, s.SeriesNumber, s.SeriesInstanceUID"), params
    return (f"SELECT {', '.join(columns)}, f.path AS path, f.size AS size, f.TransferSyntaxUID AS TransferSyntaxUID "
            f"FROM series s JOIN files f ON f.series_key = s.series_key "
            f"WHERE {where} AND f.error IS NULL AND f.SOPInstanceUID IS NOT NULL "
            "ORDER BY s.StudyInstanceUID, s.SeriesInstanceUID, f.InstanceNumber IS NULL, f.InstanceNumber, f.path"
            ), params


def rows(conn, query: Query) -> Iterator[sqlite3.Row]:
    """The matching rows, read as they are answered (SQLite: a cursor, not a list), by column name."""
    text, params = sql(query, store_dialects.dialect(conn))
    cursor = prepare(conn).execute(text, params)
    if store_dialects.dialect(conn) is store_dialects.SQLITE_DIALECT:
        cursor.row_factory = sqlite3.Row
    yield from cursor


def answer(query: Query, row: sqlite3.Row, retrieve_aet: str) -> Dataset:
    """One C-FIND answer: every key of the identifier, with the entity's value or empty (PS3.4 C.4.1.1.3.2)."""
    ds = Dataset()
    ds.SpecificCharacterSet = CHARSET
    ds.QueryRetrieveLevel = query.level
    ds.RetrieveAETitle = retrieve_aet
    present = {name.lower() for name in row.keys()}  # PostgreSQL answers names in lower case
    for keyword, tag, vr in query.wanted:
        if vr == "SQ":
            ds.add_new(tag, vr, [])
            continue
        value = row[keyword] if keyword and keyword.lower() in present else None
        if keyword == "ModalitiesInStudy" and value:
            value = sorted(set(value.split(",")))
        ds.add_new(tag, vr, value)
    return ds
