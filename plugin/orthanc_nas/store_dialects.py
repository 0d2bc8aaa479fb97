"""What differs between SQLite and PostgreSQL in the statements themselves (the storage layer's dialects).

The queries of every part (`store`) are written once, in SQLite's dialect with `?` placeholders; this
module holds what PostgreSQL needs otherwise:

- statements (`pg_statement`): `?` → `%s`, `BEGIN IMMEDIATE` → `BEGIN`, and in DDL SQLite's types to
  PostgreSQL's (`INTEGER PRIMARY KEY` → an identity column, `INTEGER` → `BIGINT`, `REAL` → `DOUBLE
  PRECISION`, `BLOB` → `BYTEA`, no `WITHOUT ROWID`), so a migration is written once for both;
- search: a term in one series' text (`Dialect.contains`: SQLite's `instr`, PostgreSQL's `LIKE '%…%'`),
  and the series whose text holds every term found through each engine's index of `series_text`
  (`Dialect.text_match`: SQLite's FTS5 trigram table `series_words`, PostgreSQL's pg_trgm index);
- file names that are not UTF-8 (`pathnames.RawPath`): SQLite keeps their bytes (a BLOB in the text
  column), PostgreSQL's text column an escaped text form (`path_text`, read back by `path_from_text`):
  the UTF-8 parts as they are, so prefixes of folders still match;
- the DICOM node's matching (`Dialect.glob`, `fold_name`, `time_value`, `group_concat`,
  `modalities_in_study`): SQLite's `GLOB` and the Python functions `query.prepare` adds to a connection;
  PostgreSQL's `LIKE`, `lower` and string functions; each engine's best form of `ModalitiesInStudy`;
- the read snapshot, row locks, identity counters and the value errors of one record.

`dialect(conn)` gives a connection's dialect (`SQLITE_DIALECT` or `PG_DIALECT`).
"""

from __future__ import annotations

import re
import sqlite3
from functools import lru_cache

from .pathnames import MARK, RawPath

try:  # a runtime dependency; SQLite alone keeps working without it
    import psycopg
except ImportError:  # pragma: no cover
    psycopg = None

SQLITE, POSTGRESQL = "sqlite", "postgresql"
#: the fewest characters an index of trigrams can find
TRIGRAM = 3

class Dialect:
    """What differs between the engines in the queries themselves."""

    name = SQLITE
    #: the errors a value of one record may raise (not the database's own trouble)
    value_errors: tuple[type[BaseException], ...] = (sqlite3.InterfaceError, sqlite3.IntegrityError,
                                                     sqlite3.DataError, sqlite3.ProgrammingError)
    begin_snapshot = "BEGIN"  # WAL: the first read fixes the snapshot
    #: whether the planner chooses between walking a search's order and reading its matches by itself, from
    #: statistics of the values (PostgreSQL); otherwise `search` chooses from the number of matches
    plans_by_statistics = False
    #: the order of sparse matches: `+` keeps SQLite's planner off the order's index (see `search`)
    scan_prefix = "+"
    #: after a text column in an order: by code points, as SQLite's BINARY compares (PostgreSQL's default is
    #: the database's locale, which skips punctuation and spaces: `a-b` between `ab` and `ac`)
    by_code_points = ""
    #: a row read to be changed in the same transaction (SQLite's BEGIN IMMEDIATE locks the whole file)
    for_update = ""
    skip_locked = ""

    def continue_identity(self, conn, table: str, column: str) -> None:
        """After rows were inserted with their ids: new rows get ids above them (SQLite: by itself)."""

    #: run first in a search's snapshot, or None: plans made for the values at hand (see `PgDialect`)
    custom_plans: str | None = None

    def contains(self, column: str, term: str) -> tuple[str, str]:
        """A clause true when `term` occurs in `column` (`%` and `_` plain characters), and its argument."""
        return f"instr({column}, ?) > 0", term

    def text_match(self, terms: tuple[str, ...]) -> tuple[str, list]:
        """A clause on `series_text` true when its `search_text` holds every term, and its arguments.

        Terms of 3 characters or more are looked up in the FTS5 table `series_words` (trigram tokenizer:
        a term is the phrase of its trigrams, so a match is an exact substring, no recheck); shorter
        ones, which no trigram holds, are checked on each row (`instr`)."""
        clauses, args = [], []
        indexed = [term for term in terms if len(term) >= TRIGRAM]
        if indexed:  # FTS5 strings: every character literal, `"` doubled
            clauses.append("id IN (SELECT rowid FROM series_words WHERE series_words MATCH ?)")
            args.append(" AND ".join('"' + term.replace('"', '""') + '"' for term in indexed))
        for term in terms:
            if len(term) < TRIGRAM:
                clause, arg = self.contains("search_text", term)
                clauses.append(clause)
                args.append(arg)
        return " AND ".join(clauses), args

    # -- the DICOM node's matching (PS3.4 C.2.2.2, see `dicom.query`) --
    def glob(self, column: str, pattern: str) -> tuple[str, str]:
        """A clause true when `column` matches a DICOM wild card pattern (`*`: any run, `?`: one
        character, everything else literal and case-sensitive), and its argument."""
        return f"{column} GLOB ?", pattern.replace("[", "[[]")

    def fold_name(self, column: str) -> str:
        """A person name folded for case-insensitive matching; `fold_value` folds the value alike."""
        return f"nas_fold({column})"

    def fold_value(self, value: str) -> str:
        return value.casefold()

    def time_value(self, column: str) -> str:
        """A TM column as `HHMMSS.FFFFFF` text, null when empty (`dicom.query.time_value`)."""
        return f"nas_tm({column})"

    def group_concat(self, expression: str) -> str:
        """The distinct values of a group joined by `,`."""
        return f"group_concat(DISTINCT {expression})"

    #: `ModalitiesInStudy` matching: a series of the same study has one of the modalities (`{marks}`: the
    #: placeholders). SQLite: a correlated EXISTS, so the planner starts from the other keys (a date range
    #: through `series_by_date`) and checks each study through `series_by_study`; as an `IN (SELECT …)` it
    #: read every series of the modality first (docs/performance.md, "C-FIND")
    modalities_in_study = ("EXISTS (SELECT 1 FROM series m WHERE m.StudyInstanceUID = s.StudyInstanceUID "
                           "AND m.Modality IN ({marks}))")


class PgDialect(Dialect):
    name = POSTGRESQL
    value_errors = (psycopg.DataError, psycopg.IntegrityError, psycopg.errors.DatatypeMismatch,
                    psycopg.errors.UntranslatableCharacter) if psycopg else ()
    begin_snapshot = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    plans_by_statistics = True
    scan_prefix = ""
    by_code_points = ' COLLATE "C"'  # UTF-8 bytes compared as they are: code point order
    for_update = " FOR UPDATE"
    skip_locked = " FOR UPDATE SKIP LOCKED"  # a row another node holds is passed over, not waited for

    def continue_identity(self, conn, table: str, column: str) -> None:
        conn.execute(f"SELECT setval(pg_get_serial_sequence(?, ?), coalesce(max({column}), 0) + 1, false) "
                     f"FROM {table}", (table, column))

    # A search's statements are the same text for any term, so psycopg prepares them and PostgreSQL would
    # then plan them once for all values: the trigram index even for a one-letter term, which it must then
    # read whole (200 ms at 200,000 series against 20 ms for a scan, docs/performance.md)
    custom_plans = "SET LOCAL plan_cache_mode = force_custom_plan"

    def contains(self, column: str, term: str) -> tuple[str, str]:
        # LIKE with the term's own wildcards escaped: served by a trigram index (pg_trgm, gin_trgm_ops)
        return f"{column} LIKE ?", f"%{_like_literal(term)}%"

    def text_match(self, terms: tuple[str, ...]) -> tuple[str, list]:
        # every term through the trigram index on series_text.search_text (a term of fewer than 3
        # characters has no trigram: the planner scans the table instead)
        found = [self.contains("search_text", term) for term in terms]
        return " AND ".join(clause for clause, _ in found), [arg for _, arg in found]

    def glob(self, column: str, pattern: str) -> tuple[str, str]:
        literal = _like_literal(pattern)  # `*` and `?` are no LIKE wild cards: kept as they are, then turned
        return f"{column} LIKE ?", literal.replace("*", "%").replace("?", "_")

    def fold_name(self, column: str) -> str:
        # lower() follows the database's locale (ctype); Python's lower() agrees for the letters of names
        return f"lower({column})"

    def fold_value(self, value: str) -> str:
        return value.lower()

    def time_value(self, column: str) -> str:
        clean = f"replace(nullif(btrim({column}), ''), ':', '')"
        return (f"rpad(split_part({clean}, '.', 1), 6, '0') || '.' || "
                f"rpad(split_part({clean}, '.', 2), 6, '0')")

    def group_concat(self, expression: str) -> str:
        return f"string_agg(DISTINCT {expression}, ',')"

    # PostgreSQL turns the IN into a semi-join planned from its statistics; the EXISTS above is as fast
    # planned with its values, but psycopg prepares a statement run 5 times and the generic plan of the
    # EXISTS, made without them, is slower (8 ms against 1 ms, docs/performance.md)
    modalities_in_study = ("s.StudyInstanceUID IN (SELECT m.StudyInstanceUID FROM series m "
                           "WHERE m.Modality IN ({marks}))")


def _like_literal(text: str) -> str:
    """`text` with LIKE's own wild cards and escape character escaped (PostgreSQL's default escape `\\`)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


SQLITE_DIALECT, PG_DIALECT = Dialect(), PgDialect()


def dialect(conn) -> Dialect:
    """The dialect of a connection (an `sqlite3.Connection` or a `PgConnection`)."""
    return getattr(conn, "dialect", SQLITE_DIALECT)


_DDL_TYPES = [
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\b", re.I), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.I), "BIGINT"),
    (re.compile(r"\bREAL\b", re.I), "DOUBLE PRECISION"),
    (re.compile(r"\bBLOB\b", re.I), "BYTEA"),
    (re.compile(r"\)\s*WITHOUT\s+ROWID", re.I), ")"),
]


@lru_cache(maxsize=512)
def pg_statement(sql: str) -> str:
    """An SQLite statement as PostgreSQL takes it (see the module's docstring)."""
    text = sql.strip()
    if re.match(r"BEGIN\s+(IMMEDIATE|DEFERRED|EXCLUSIVE)\b", text, re.I):
        return "BEGIN"
    if re.match(r"(CREATE|ALTER)\b", text, re.I):
        for pattern, replacement in _DDL_TYPES:
            text = pattern.sub(replacement, text)
    return text.replace("%", "%%").replace("?", "%s")


_RAW_CHARS = re.compile(f"[\udc80-\udcff{MARK}]")
_ESCAPED = re.compile(f"{MARK}(.)", re.S)


def path_text(raw: bytes) -> str:
    """PostgreSQL's text form of a raw path: valid UTF-8 as it is; each other byte `xx` as `MARK` followed by
    U+E0xx (private use), `MARK` itself doubled. Exactly reversed by `path_from_text`."""
    return _RAW_CHARS.sub(lambda m: MARK + (MARK if m[0] == MARK else chr(ord(m[0]) - 0xDC00 + 0xE000)),
                          raw.decode("utf-8", "surrogateescape"))


def path_from_text(text: str) -> str:
    """The path (as `os` functions take it: undecodable bytes as PEP 383 surrogates) of `path_text`'s form."""
    return _ESCAPED.sub(lambda m: MARK if m[1] == MARK else chr(ord(m[1]) - 0xE000 + 0xDC00), text)


if psycopg is not None:
    class _RawPathDumper(psycopg.adapt.Dumper):
        """A `RawPath` parameter, sent as text in `path_text`'s form."""

        oid = psycopg.adapters.types["text"].oid

        def dump(self, obj: bytes) -> bytes:
            return path_text(obj).encode("utf-8")


def configure_pg(conn) -> None:
    """Each new pooled PostgreSQL connection (the pool's `configure`): raw paths go as text (see `path_text`)."""
    conn.adapters.register_dumper(RawPath, _RawPathDumper)
