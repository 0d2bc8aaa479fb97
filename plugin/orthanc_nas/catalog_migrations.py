"""The index's schema: its numbered migrations (`MIGRATIONS`, run by `catalog.migrate`) and their Python steps.

Each migration is an SQL script written in SQLite's dialect (translated for PostgreSQL by `store_dialects`),
or a function given the connection for what SQL alone cannot do (e.g. filling a column computed in
Python). An index made by an older version is upgraded on first use. The folded search columns
(`search_columns`) are computed here for the series already indexed and by the writer for new ones.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from .normalize import fold, search_text
from .store_dialects import PG_DIALECT, dialect

#: the fields a search term is looked for in, folded into `series.search_text`
SEARCHED_FIELDS = ("PatientName", "PatientID", "StudyDescription", "SeriesDescription")


def search_columns(values: dict) -> tuple[str, str]:
    """`(search_text, sort_name)` of a series from its DICOM fields (decoded text)."""
    return search_text(values.get(f) for f in SEARCHED_FIELDS), fold(values.get("PatientName"))


def _add_search_columns(conn: sqlite3.Connection) -> None:
    """Migration 2: folded search columns, filled for the series already indexed, and the search indexes."""
    conn.execute("ALTER TABLE series ADD COLUMN search_text TEXT NOT NULL DEFAULT ''")
    conn.execute("ALTER TABLE series ADD COLUMN sort_name TEXT NOT NULL DEFAULT ''")
    rows = conn.execute(f"SELECT series_key, {', '.join(SEARCHED_FIELDS)} FROM series").fetchall()
    conn.executemany("UPDATE series SET search_text=?, sort_name=? WHERE series_key=?",
                     (search_columns(dict(zip(SEARCHED_FIELDS, row[1:], strict=True))) + (row[0],)
                      for row in rows))
    # the answer's order (newest first): a search without words reads its first page straight off it
    if dialect(conn) is PG_DIALECT:  # NULLs placed as SQLite places them (see `search._ORDER`)
        conn.execute("CREATE INDEX series_by_date ON series(StudyDate DESC NULLS LAST, sort_name, "
                     "SeriesNumber NULLS FIRST, series_key)")
    else:
        conn.execute("CREATE INDEX series_by_date ON series(StudyDate DESC, sort_name, SeriesNumber, series_key)")
    conn.execute("CREATE INDEX series_by_modality ON series(Modality, StudyDate)")
    if dialect(conn) is PG_DIALECT:  # words are found by a trigram index (SQLite scans the rows)
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        conn.execute("CREATE INDEX series_search ON series USING gin (search_text gin_trgm_ops)")


#: derived from `series` by triggers (`_search_table`): filled on the target, never copied (`moving`)
DERIVED_TABLES = ("series_text", "series_words")

_SERIES_TEXT = """
    CREATE TABLE series_text (
        id INTEGER PRIMARY KEY,
        series_key TEXT NOT NULL UNIQUE,
        search_text TEXT NOT NULL
    )"""

# SQLite: `series` keeps `series_text` in step, which keeps its FTS5 table in step (SQLite's recipe for an
# external content table); an upsert that leaves the text as it was changes neither
_SQLITE_SEARCH_TABLE = [
    "CREATE VIRTUAL TABLE series_words USING fts5(search_text, content='series_text', content_rowid='id', "
    "tokenize='trigram case_sensitive 1')",
    "INSERT INTO series_words(series_words) VALUES ('rebuild')",
    "CREATE TRIGGER series_text_added AFTER INSERT ON series BEGIN "
    "INSERT INTO series_text(series_key, search_text) VALUES (new.series_key, new.search_text); END",
    "CREATE TRIGGER series_text_changed AFTER UPDATE OF search_text ON series "
    "WHEN old.search_text IS NOT new.search_text BEGIN "
    "UPDATE series_text SET search_text = new.search_text WHERE series_key = new.series_key; END",
    "CREATE TRIGGER series_text_removed AFTER DELETE ON series BEGIN "
    "DELETE FROM series_text WHERE series_key = old.series_key; END",
    "CREATE TRIGGER series_words_added AFTER INSERT ON series_text BEGIN "
    "INSERT INTO series_words(rowid, search_text) VALUES (new.id, new.search_text); END",
    "CREATE TRIGGER series_words_removed AFTER DELETE ON series_text BEGIN "
    "INSERT INTO series_words(series_words, rowid, search_text) VALUES ('delete', old.id, old.search_text); END",
    "CREATE TRIGGER series_words_changed AFTER UPDATE ON series_text BEGIN "
    "INSERT INTO series_words(series_words, rowid, search_text) VALUES ('delete', old.id, old.search_text); "
    "INSERT INTO series_words(rowid, search_text) VALUES (new.id, new.search_text); END",
]

# PostgreSQL: a trigram index on the narrow `series_text` too, where matches are counted (a third of the
# pages of `series` to read when a term has no trigram or matches thousands of series); `series` keeps its
# own, from which the planner reads a page of sparse matches. One trigger function keeps it in step.
_PG_SEARCH_TABLE = [
    "CREATE INDEX series_text_search ON series_text USING gin (search_text gin_trgm_ops)",
    """CREATE FUNCTION series_text_sync() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO series_text(series_key, search_text) VALUES (NEW.series_key, NEW.search_text);
        ELSIF TG_OP = 'DELETE' THEN
            DELETE FROM series_text WHERE series_key = OLD.series_key;
        ELSIF NEW.search_text IS DISTINCT FROM OLD.search_text THEN
            UPDATE series_text SET search_text = NEW.search_text WHERE series_key = NEW.series_key;
        END IF;
        RETURN NULL;
    END $$""",
    "CREATE TRIGGER series_text_sync AFTER INSERT OR UPDATE OR DELETE ON series "
    "FOR EACH ROW EXECUTE FUNCTION series_text_sync()",
]


def _search_table(conn: sqlite3.Connection) -> None:
    """Migration 9: each series' folded text also in the narrow table `series_text`, which each engine
    indexes by trigrams (SQLite: FTS5, PostgreSQL: pg_trgm), kept in step with `series` by triggers.
    Searches count their matches there (docs/performance.md, "3 and 10 million files")."""
    conn.execute(_SERIES_TEXT)
    conn.execute("INSERT INTO series_text(series_key, search_text) SELECT series_key, search_text FROM series")
    for statement in _PG_SEARCH_TABLE if dialect(conn) is PG_DIALECT else _SQLITE_SEARCH_TABLE:
        conn.execute(statement)


def _order_by_code_points(conn: sqlite3.Connection) -> None:
    """Migration 10: PostgreSQL's `series_by_date` sorts its text by code points (`Dialect.by_code_points`),
    as the search's order now does whatever the database's locale; SQLite's always did (BINARY)."""
    if dialect(conn) is PG_DIALECT:
        conn.execute("DROP INDEX series_by_date")
        conn.execute('CREATE INDEX series_by_date ON series(StudyDate DESC NULLS LAST, sort_name COLLATE "C", '
                     'SeriesNumber NULLS FIRST, series_key COLLATE "C")')


def _dates_as_dates(conn: sqlite3.Connection) -> None:
    """Migration 5: dates stored by an older version as the file gave them (`2024.01.02`, `20240230`) are
    stored as `YYYYMMDD` or null, so that they compare and sort as dates (see `dicom_values.date`)."""
    from .dicom_values import date  # the reading rules of DA: the same as for new files

    for column in ("StudyDate", "PatientBirthDate"):
        rows = conn.execute(f"SELECT series_key, {column} FROM series WHERE {column} IS NOT NULL").fetchall()
        conn.executemany(f"UPDATE series SET {column}=? WHERE series_key=?",
                         ((date(str(value)), key) for key, value in rows if date(str(value)) != value))


#: Schema versions, in order: an SQL script, or a function given the connection for what SQL alone
#: cannot do (e.g. filling a column computed in Python). Each runs in its own transaction.
Migration = str | Callable[[sqlite3.Connection], None]

MIGRATIONS: list[Migration] = [
    # 1: files, series, runs
    """
    CREATE TABLE files (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        series_key TEXT,
        SOPInstanceUID TEXT,
        InstanceNumber INTEGER,
        error TEXT,
        seen_run INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX files_by_series ON files(series_key, InstanceNumber);
    CREATE TABLE series (
        series_key TEXT PRIMARY KEY,
        PatientName TEXT, PatientID TEXT, PatientBirthDate TEXT, PatientSex TEXT,
        StudyInstanceUID TEXT, StudyDate TEXT, StudyDescription TEXT, AccessionNumber TEXT,
        SeriesInstanceUID TEXT, SeriesNumber INTEGER, SeriesDescription TEXT, Modality TEXT,
        file_count INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        started_at REAL NOT NULL,
        finished_at REAL,
        outcome TEXT
    );
    """,
    # 2: folded search columns on series, indexes for the search filters and order
    _add_search_columns,
    # 3: what the DICOM node needs; the rows already there are version 1, read again by the next run
    """
    ALTER TABLE files ADD COLUMN SOPClassUID TEXT;
    ALTER TABLE files ADD COLUMN TransferSyntaxUID TEXT;
    ALTER TABLE files ADD COLUMN fields_version INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE series ADD COLUMN StudyTime TEXT;
    ALTER TABLE series ADD COLUMN StudyID TEXT;
    ALTER TABLE series ADD COLUMN ReferringPhysicianName TEXT;
    ALTER TABLE series ADD COLUMN InstitutionName TEXT;
    ALTER TABLE series ADD COLUMN BodyPartExamined TEXT;
    """,
    # 4: the DICOM node's lookups: series by study, series and patient, files by SOP instance
    """
    CREATE INDEX series_by_study ON series(StudyInstanceUID);
    CREATE INDEX series_by_uid ON series(SeriesInstanceUID);
    CREATE INDEX series_by_patient ON series(PatientID);
    CREATE INDEX files_by_sop ON files(SOPInstanceUID);
    """,
    # 5: dates as YYYYMMDD or null (values read from files, see `dicom_values`)
    _dates_as_dates,
    # 6: what each run was and did (GET /nas/runs)
    """
    ALTER TABLE runs ADD COLUMN trigger TEXT NOT NULL DEFAULT 'api';
    ALTER TABLE runs ADD COLUMN path TEXT NOT NULL DEFAULT '';
    ALTER TABLE runs ADD COLUMN files_read INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN files_skipped INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN files_removed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN errors INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN series_added INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN series_changed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE runs ADD COLUMN series_removed INTEGER NOT NULL DEFAULT 0;
    """,
    # 7: the cluster's indexing run, one row, and its work items (several Orthanc nodes on one PostgreSQL
    # index, see `cluster` and `cluster_indexing`)
    """
    CREATE TABLE cluster_run (
        id INTEGER PRIMARY KEY,
        node TEXT NOT NULL,
        running INTEGER NOT NULL,
        stop_requested INTEGER NOT NULL,
        heartbeat REAL NOT NULL,
        status TEXT NOT NULL,
        run_id INTEGER,
        full_run INTEGER NOT NULL DEFAULT 0,
        folder TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE work_items (
        run_id INTEGER NOT NULL,
        folder TEXT NOT NULL,
        recursive INTEGER NOT NULL,
        state TEXT NOT NULL,
        node TEXT,
        lease_until REAL NOT NULL,
        files INTEGER NOT NULL DEFAULT 0,
        walk_errors INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, folder, recursive)
    );
    """,
    # 8: each node's counters of a cluster run (its status snapshot): `GET /nas/status` sums them
    """
    CREATE TABLE run_nodes (
        run_id INTEGER NOT NULL,
        node TEXT NOT NULL,
        updated_at REAL NOT NULL,
        status TEXT NOT NULL,
        PRIMARY KEY (run_id, node)
    );
    """,
    # 9: the series' folded text in a narrow table indexed by trigrams on each engine (search)
    _search_table,
    # 10: the search's order by code points on PostgreSQL too, whatever the database's locale
    _order_by_code_points,
]
