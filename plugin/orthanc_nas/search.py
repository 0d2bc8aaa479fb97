"""Searching the index: the queries behind `GET /nas/search` and `GET /nas/series/{key}`.

Pure functions over a connection of the index (SQLite or PostgreSQL, see
`store`), shared by the REST routes and the command line. Terms are folded like
the stored `series.search_text` (see `normalize`) and each must occur in it
(`Dialect.contains`: `%` and `_` in a term are plain characters; on PostgreSQL
a trigram index finds the rows). One row per series: 20,000 rows for a million files, a scan
of which takes a few milliseconds (figures in docs/performance.md).

Each answer is read from one snapshot of the index (WAL), so a search made
while indexing writes sees every series either before or after a batch, with
its file count, the total and the page agreeing.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from .catalog import FILE_ORDER, SERIES_FIELDS, read_snapshot
from .errors import BadRequest, NotFound, shown
from .normalize import terms as fold_terms
from .pathnames import escaped, loaded
from .store_dialects import Dialect, dialect

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_OFFSET = 1_000_000_000
MAX_TERMS = 32

#: the query parameters of `GET /nas/search` (any other one is a 400, see `http.check_query`)
SEARCH_PARAMETERS = ("q", "modality", "date_from", "date_to", "limit", "offset")
#: the fields of each series in an answer, in order
ANSWER_FIELDS = ("series_key", *SERIES_FIELDS, "file_count")
FILE_FIELDS = ("path", "size", "SOPInstanceUID", "InstanceNumber")

# StudyDate newest first, then PatientName (folded, so case and accents do not scatter a patient),
# then SeriesNumber; the key last makes pages stable. Index `series_by_date` has this order: a search
# without terms reads its first page straight off it. With terms every row is read anyway, and walking
# the index then costs a table lookup per row (3× slower than a plain scan and a sort of the matches,
# measured on 20,000 series), so `+` keeps SQLite's planner off it (`Dialect.scan_prefix`; PostgreSQL's
# planner chooses by its statistics).
# NULLS as SQLite places them by default (PostgreSQL's default is the opposite): the same order on both.
_ORDER = "StudyDate DESC NULLS LAST, sort_name, SeriesNumber NULLS FIRST, series_key"
_SELECT = ", ".join(ANSWER_FIELDS)


@dataclass(frozen=True)
class SearchParams:
    """A validated search: folded terms and filters."""

    terms: tuple[str, ...] = ()
    modality: str | None = None
    date_from: str | None = None
    date_to: str | None = None
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> SearchParams:
        """Validate decoded query parameters; an empty value counts as absent. 400 naming a bad one."""
        given = {k: v.strip() for k, v in query.items() if v is not None and v.strip()}
        words = tuple(fold_terms(given.get("q")))
        if len(words) > MAX_TERMS:
            raise BadRequest(f"parameter q has {len(words)} words; at most {MAX_TERMS} are allowed")
        params = cls(
            terms=words,
            modality=given["modality"].upper() if "modality" in given else None,
            date_from=_date(given, "date_from"),
            date_to=_date(given, "date_to"),
            limit=integer_parameter(given, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
            offset=integer_parameter(given, "offset", 0, 0, MAX_OFFSET),
        )
        if params.date_from and params.date_to and params.date_from > params.date_to:
            raise BadRequest(f"parameter date_from ({params.date_from}) is after date_to ({params.date_to})",
                             "Give date_from on or before date_to.")
        return params


def integer_parameter(given: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    """The query parameter `name` as an integer in [low, high], `default` when absent; 400 naming it."""
    if name not in given:
        return default
    text = given[name]
    if re.fullmatch(r"[0-9]{1,10}", text) and low <= int(text) <= high:
        return int(text)
    raise BadRequest(f"parameter {name} must be an integer between {low} and {high}, not {text!r}"[:200],
                     field=name)


def _date(given: Mapping[str, str], name: str) -> str | None:
    text = given.get(name)
    if text is None:
        return None
    try:
        if re.fullmatch(r"[0-9]{8}", text):
            datetime.strptime(text, "%Y%m%d")
            return text
    except ValueError:
        pass
    raise BadRequest(f"parameter {name} must be a date as YYYYMMDD, not {text!r}"[:200],
                     f"For example {name}=20240131.")


@dataclass
class SearchResult:
    """One page of matching series and the number of matches in all."""

    total: int
    series: list[dict]


def _where(params: SearchParams, dialect: Dialect) -> tuple[str, list]:
    clauses: list[str] = []
    args: list = []
    for term in params.terms:
        clause, arg = dialect.contains("search_text", term)
        clauses.append(clause)
        args.append(arg)
    for clause, value in (("Modality = ?", params.modality), ("StudyDate >= ?", params.date_from),
                          ("StudyDate <= ?", params.date_to)):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def _dicts(cursor: sqlite3.Cursor, fields: tuple[str, ...]) -> list[dict]:
    return [dict(zip(fields, row, strict=True)) for row in cursor]


def search(conn: sqlite3.Connection, params: SearchParams) -> SearchResult:
    """The page of series matching `params`, in the spec's order, and the total number of matches."""
    engine = dialect(conn)
    where, args = _where(params, engine)
    order = engine.scan_prefix + _ORDER if params.terms else _ORDER
    with read_snapshot(conn):
        rows = _dicts(conn.execute(f"SELECT {_SELECT} FROM series{where} ORDER BY {order} LIMIT ? OFFSET ?",
                                   [*args, params.limit, params.offset]), ANSWER_FIELDS)
        if len(rows) < params.limit and (rows or params.offset == 0):
            total = params.offset + len(rows)  # the last page: no need to count
        else:
            total = conn.execute(f"SELECT count(*) FROM series{where}", args).fetchone()[0]
    return SearchResult(total, rows)


def series_detail(conn: sqlite3.Connection, key: str) -> dict:
    """One series with its files (ordered by InstanceNumber, files without one last). NotFound if unknown."""
    with read_snapshot(conn):
        found = _dicts(conn.execute(f"SELECT {_SELECT} FROM series WHERE series_key = ?", (key,)), ANSWER_FIELDS)
        if not found:
            raise NotFound(f"no series {shown(key)} in the NAS index",
                           "Search again: the series may have left the NAS since the last indexing.")
        files = _dicts(conn.execute(
            f"SELECT {', '.join(FILE_FIELDS)} FROM files WHERE series_key = ? ORDER BY {FILE_ORDER}", (key,)),
            FILE_FIELDS)
    for f in files:  # a name that is not UTF-8 is shown with its undecodable bytes escaped
        f["path"] = escaped(loaded(f["path"]))
    return {**found[0], "files": files}


def patient_series(conn: sqlite3.Connection, patient_id: str, limit: int = MAX_LIMIT) -> list[dict]:
    """The series of one PatientID (exact match), in the search's order: StudyDate newest first."""
    with read_snapshot(conn):
        return _dicts(conn.execute(f"SELECT {_SELECT} FROM series WHERE PatientID = ? ORDER BY {_ORDER} LIMIT ?",
                                   (patient_id, limit)), ANSWER_FIELDS)
