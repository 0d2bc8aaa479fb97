"""Searching the index: the queries behind `GET /nas/search` and `GET /nas/series/{key}`.

Pure functions over a connection of the index (SQLite or PostgreSQL, see
`store`), shared by the REST routes and the command line. Terms are folded like
the stored `series.search_text` (see `normalize`) and each must occur in it as
a substring (`%`, `_`, `*`, `"` in a term are plain characters). One row per
series (20,000 for a million files); the series' text is also in the narrow
table `series_text`, indexed by trigrams on each engine (`Dialect.text_match`),
where matches are counted (figures in docs/performance.md).

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
from .http import check_plain_text
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
# without terms, or with terms most series match, reads its first page straight off it. Sparse matches
# are read and sorted instead: `+` keeps SQLite's planner off the index then (`Dialect.scan_prefix`,
# a table lookup per row walked; PostgreSQL's planner chooses by its statistics).
# NULLS as SQLite places them by default (PostgreSQL's default is the opposite), and text by code points
# (`Dialect.by_code_points`, whatever the database's locale): the same order, page for page, on both.
def _order(engine: Dialect) -> str:
    text = engine.by_code_points
    return f"StudyDate DESC NULLS LAST, sort_name{text}, SeriesNumber NULLS FIRST, series_key{text}"


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
        """Validate decoded query parameters; an empty value counts as absent. 400 naming a bad one, also
        one holding what no indexed text holds and no engine takes (`http.check_plain_text`)."""
        given = {k: v.strip() for k, v in query.items() if v is not None and v.strip()}
        for name, text in given.items():
            check_plain_text(text, f"parameter {name}", field=name)
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


def _filters(params: SearchParams) -> tuple[list[str], list]:
    """The clauses on `series` of the filters other than terms, and their arguments."""
    found = [(clause, value) for clause, value in (
        ("Modality = ?", params.modality), ("StudyDate >= ?", params.date_from), ("StudyDate <= ?", params.date_to))
        if value is not None]
    return [clause for clause, _ in found], [value for _, value in found]


def _dicts(cursor: sqlite3.Cursor, fields: tuple[str, ...]) -> list[dict]:
    return [dict(zip(fields, row, strict=True)) for row in cursor]


def _where(clauses: list[str]) -> str:
    return (" WHERE " + " AND ".join(clauses)) if clauses else ""


def search(conn: sqlite3.Connection, params: SearchParams) -> SearchResult:
    """The page of series matching `params`, in the spec's order, and the total number of matches.

    The total is counted first, in the narrow table `series_text` through each engine's trigram index
    (`Dialect.text_match`). The page then comes one of two ways, whichever reads fewer rows: when
    matches are dense, by walking the series in the answer's order (index `series_by_date`) and checking
    the terms on each until the page is full (about (offset + limit) × series / matches rows); when they
    are sparse, by reading the matches found through the index and sorting them. PostgreSQL's planner
    makes that choice itself (its trigram index on `series` finds sparse matches)."""
    engine = dialect(conn)
    filters, filter_args = _filters(params)
    matching, match_args = engine.text_match(params.terms) if params.terms else ("", [])
    in_matches = f"series_key IN (SELECT series_key FROM series_text WHERE {matching})"
    with read_snapshot(conn):
        if params.terms and engine.custom_plans:
            conn.execute(engine.custom_plans)
        if not filters:  # the narrow table alone
            total = conn.execute(f"SELECT count(*) FROM series_text{_where([matching] if matching else [])}",
                                 match_args).fetchone()[0]
        else:
            within = [*filters, in_matches] if matching else filters
            total = conn.execute(f"SELECT count(*) FROM series{_where(within)}",
                                 [*filter_args, *match_args]).fetchone()[0]
        if total <= params.offset:
            return SearchResult(total, [])
        clauses, args, order = filters, filter_args, _order(engine)
        if params.terms and (engine.plans_by_statistics or _dense(conn, total, params)):  # walk the order
            for term in params.terms:
                clause, arg = engine.contains("search_text", term)
                clauses, args = [*clauses, clause], [*args, arg]
        elif params.terms:  # read the matches, then sort them
            clauses, args, order = [*filters, in_matches], [*filter_args, *match_args], engine.scan_prefix + order
        rows = _dicts(conn.execute(f"SELECT {_SELECT} FROM series{_where(clauses)} ORDER BY {order} LIMIT ? OFFSET ?",
                                   [*args, params.limit, params.offset]), ANSWER_FIELDS)
    return SearchResult(total, rows)


def _dense(conn: sqlite3.Connection, total: int, params: SearchParams) -> bool:
    """Whether walking the series in order finds the page reading fewer rows than the `total` matches:
    (offset + limit) × series / total < total. The series are counted from above by the last id of
    `series_text` (an index's last entry: no count)."""
    series = conn.execute("SELECT max(id) FROM series_text").fetchone()[0] or 0
    return total * total > (params.offset + params.limit) * series


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
        order = _order(dialect(conn))
        return _dicts(conn.execute(f"SELECT {_SELECT} FROM series WHERE PatientID = ? ORDER BY {order} LIMIT ?",
                                   (patient_id, limit)), ANSWER_FIELDS)
