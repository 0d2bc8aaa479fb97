"""The index: `index.db`, an SQLite database in WAL mode.

One row per file (path relative to the NAS root, size, mtime, the per-file
attributes, the error if it could not be read, the run that last saw it) and
one row per series (its attributes, file count and the folded text searches
look in, see `normalize`). Schema changes go through
numbered migrations recorded in `PRAGMA user_version`, so an index made by an
older version opens in a newer one.

Writes come from one thread (the indexer's writer); each batch is one
transaction that updates files and their series together, so a reader (WAL
gives readers a snapshot) never sees a half-written series. Whatever a file
holds, it cannot fail its batch: values are made SQLite-safe before the write
(`sqlite_value`), and a batch SQLite still refuses is written again record by
record, the refused record kept as a file with its error.

Paths are kept as `pathnames.stored` gives them (raw bytes for a name that is not UTF-8).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

from . import store
from .errors import NotFound
from .normalize import fold, search_text
from .pathnames import escaped, loaded, stored

log = logging.getLogger("orthanc_nas")

INDEX_NAME = "index.db"

#: attributes kept per series (the search answer's DICOM fields)
SERIES_FIELDS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
    "StudyDescription", "AccessionNumber", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription",
    "Modality",
)
#: what the DICOM node answers besides (PS3.4 C.6 return keys): per series, and per file
NODE_SERIES_FIELDS = ("StudyTime", "StudyID", "ReferringPhysicianName", "InstitutionName", "BodyPartExamined")
NODE_FILE_FIELDS = ("SOPClassUID", "TransferSyntaxUID")
#: the header fields a file row holds: rows written by an older version (`files.fields_version` lower)
#: are read again by the next incremental run, even when the file did not change
FIELDS_VERSION = 3  # 2: the DICOM node's fields; 3: values read by their VR (`dicom_values`)
#: the order of a series' files everywhere they are listed (the zip of a share, `GET /nas/series/{key}`)
FILE_ORDER = "InstanceNumber IS NULL, InstanceNumber, path"

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
    if store.dialect(conn) is store.PG_DIALECT:  # NULLs placed as SQLite places them (see `search._ORDER`)
        conn.execute("CREATE INDEX series_by_date ON series(StudyDate DESC NULLS LAST, sort_name, "
                     "SeriesNumber NULLS FIRST, series_key)")
    else:
        conn.execute("CREATE INDEX series_by_date ON series(StudyDate DESC, sort_name, SeriesNumber, series_key)")
    conn.execute("CREATE INDEX series_by_modality ON series(Modality, StudyDate)")
    if store.dialect(conn) is store.PG_DIALECT:  # words are found by a trigram index (SQLite scans the rows)
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        conn.execute("CREATE INDEX series_search ON series USING gin (search_text gin_trgm_ops)")


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
]
RUN_FIELDS = ("id", "started_at", "finished_at", "outcome", "trigger", "path", "files_read", "files_skipped",
              "files_removed", "errors", "series_added", "series_changed", "series_removed")
RUNS_KEPT = 100


def series_key(record: dict, path: str) -> str:
    """A stable, URL-safe identifier of the group a file belongs to.

    By SeriesInstanceUID; without it, by StudyInstanceUID + SeriesNumber; without
    either, by the file's folder (the best remaining guess of a series on a NAS).
    """
    if record.get("SeriesInstanceUID"):
        basis = "uid:" + record["SeriesInstanceUID"]
    elif record.get("StudyInstanceUID"):
        basis = f"study:{record['StudyInstanceUID']}|{record.get('SeriesNumber')}"
    else:
        basis = "folder:" + path.rpartition("/")[0]
    digest = hashlib.sha256(basis.encode("utf-8", "surrogateescape")).digest()[:15]
    return base64.urlsafe_b64encode(digest).decode("ascii")


INT64_MIN, INT64_MAX = -2**63, 2**63 - 1  # SQLite's INTEGER

#: what SQLite may refuse in one record's values (not the database's own trouble: locked, full, corrupt)
RECORD_ERRORS = (OverflowError, UnicodeError, ValueError, TypeError, *store.SQLITE_DIALECT.value_errors,
                 *store.PG_DIALECT.value_errors)


def sqlite_value(value):
    """A value SQLite stores as it is: None, an int within 64 bits, a finite float, or text without NULs
    that is valid UTF-8 (undecodable bytes escaped). Anything else becomes None, or its text."""
    kind = type(value)
    if kind is str:  # the usual value: checked without copying it
        if "\0" in value:
            value = value.replace("\0", "")
        return value if value.isascii() else escaped(value)
    if value is None or kind is bool:
        return value
    if isinstance(value, int):
        return value if INT64_MIN <= value <= INT64_MAX else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return sqlite_value(str(value))


#: the index and the shares hold patient data: only Orthanc's own account may read them
PRIVATE_MODE = 0o600


def make_private(path: str) -> None:
    """Create `path` if missing, and give it (and SQLite's -wal/-shm beside it) mode 0600, whatever the umask.

    SQLite creates its -wal and -shm files with the mode of the database file, so they follow.
    Files made readable by an older version are closed again.
    """
    # Only a file that does not exist yet is opened here: closing any descriptor of a database file drops
    # every POSIX lock this process holds on it (fcntl), those of SQLite's open connections too, so another
    # process's SQLite would take itself for the last user and delete the WAL that this one writes to.
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, PRIVATE_MODE))
    except FileExistsError:
        pass
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            if stat.S_IMODE(os.stat(name).st_mode) != PRIVATE_MODE:
                os.chmod(name, PRIVATE_MODE)
        except FileNotFoundError:
            pass


def connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    if not readonly and path != ":memory:":
        make_private(path)
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a crash loses at most the last transactions, never corrupts the file
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS, part: str = "index") -> int:
    """Apply the migrations the database has not seen yet; returns the schema version.

    `part`: which set of migrations (`index`, `shares`, `dicom`): on PostgreSQL one database holds them
    all (see `store`). Safe when several connections, or several Orthanc nodes, open an older database
    at once: each step checks the version again under the write lock.
    """
    version = store.schema_version(conn, part)
    for number, step in enumerate(migrations[version:], start=version + 1):
        with transaction(conn):
            store.lock_schema(conn, part)
            if store.schema_version(conn, part) >= number:
                continue  # another connection applied it meanwhile
            if callable(step):
                step(conn)
            else:
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            store.set_schema_version(conn, part, number)
    return len(migrations)


@contextmanager
def read_snapshot(conn: sqlite3.Connection):
    """Run several reads on one consistent state of the index (WAL: writers are not blocked).

    Within an enclosing transaction, that one's snapshot is used.
    """
    if conn.in_transaction:
        yield conn
        return
    conn.execute(store.dialect(conn).begin_snapshot)
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


@contextmanager
def transaction(conn: sqlite3.Connection):
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def savepoint(conn: sqlite3.Connection):
    """A part of the enclosing transaction that can fail alone: undone, the rest of the transaction kept."""
    conn.execute("SAVEPOINT part")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK TO part")
        conn.execute("RELEASE part")
        raise
    conn.execute("RELEASE part")


def _chunks(items: Sequence, size: int = 500) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class Catalog:
    """The index database of one DataDirectory."""

    def __init__(self, data_dir: str, engine: store.Engine | None = None):
        self.path = os.path.join(data_dir, INDEX_NAME)
        self.engine = engine or store.default_engine(data_dir)
        self._local = threading.local()

    # -- connections ------------------------------------------------------------
    def exists(self) -> bool:
        return self.engine.exists("index")

    def open_for_writing(self) -> sqlite3.Connection:
        """The writer's connection; creates and migrates the database if needed."""
        conn = self.engine.connect("index")
        migrate(conn)
        return conn

    def reader(self) -> sqlite3.Connection:
        """A read connection for this thread (REST requests, search). Raises NotFound without an index."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if not self.exists():
                raise NotFound("there is no NAS index yet",
                               "Run indexing first: the \"Index now\" button of the NAS panel, or POST /nas/index.")
            conn = self.engine.connect("index")
            migrate(conn)  # an index made by an older version is upgraded on first use
            conn.row_factory = sqlite3.Row  # (rows of PostgreSQL answer by name already)
            self._local.conn = conn
        return conn

    # -- queries ----------------------------------------------------------------
    def counts(self) -> dict:
        if not self.exists():
            return {"files": 0, "series": 0}
        conn = self.reader()
        files = conn.execute("SELECT count(*) FROM files").fetchone()[0]
        series = conn.execute("SELECT count(*) FROM series").fetchone()[0]
        return {"files": files, "series": series}

    def series_rows(self, keys: Sequence[str]) -> dict[str, sqlite3.Row]:
        """The series rows of the given keys that are in the index (missing keys are left out)."""
        found: dict[str, sqlite3.Row] = {}
        for chunk in _chunks(list(keys)):
            marks = ",".join("?" * len(chunk))
            for row in self.reader().execute(f"SELECT * FROM series WHERE series_key IN ({marks})", chunk):
                found[row["series_key"]] = row
        return found

    def runs(self, limit: int = RUNS_KEPT) -> list[dict]:
        """The last runs, newest first: `RUN_FIELDS`, times in epoch seconds."""
        if not self.exists():
            return []
        rows = self.reader().execute(f"SELECT {', '.join(RUN_FIELDS)} FROM runs ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(zip(RUN_FIELDS, row, strict=True)) for row in rows]

    def series_files(self, key: str) -> list[dict]:
        """The readable files of one series (path, size, mtime_ns), in instance order as `GET /nas/series` lists them.

        `path` opens the file (a name that is not UTF-8 as `os` gives it, see `pathnames`).
        """
        return [{"path": loaded(path), "size": size, "mtime_ns": mtime} for path, size, mtime in self.reader().execute(
            f"SELECT path, size, mtime_ns FROM files WHERE series_key=? AND error IS NULL ORDER BY {FILE_ORDER}",
            (key,))]


class CatalogWriter:
    """Writes one indexing run into the catalog. Used from a single thread."""

    def __init__(self, catalog: Catalog):
        self.conn = catalog.open_for_writing()
        self.run_id = 0
        # series keys this run added, changed (files added, changed or removed) and removed
        self.added: set[str] = set()
        self.changed: set[str] = set()
        self.removed: set[str] = set()

    def begin_run(self, trigger: str = "api", path: str = "") -> int:
        """Record a run's start (`trigger`: api, schedule or start; `path`: its folder, "" for all); keeps
        the last `RUNS_KEPT` runs."""
        with transaction(self.conn):
            self.run_id = self.conn.execute("INSERT INTO runs(started_at, trigger, path) VALUES (?,?,?) RETURNING id",
                                            (time.time(), trigger, path)).fetchone()[0]
            self.conn.execute("DELETE FROM runs WHERE id <= ?", (self.run_id - RUNS_KEPT,))
        return self.run_id

    def finish_run(self, outcome: str, counts: dict | None = None) -> None:
        """Record the end: `counts` holds files_read, files_skipped, files_removed, errors."""
        counts = {k: (counts or {}).get(k, 0) for k in ("files_read", "files_skipped", "files_removed", "errors")}
        self.conn.execute(
            "UPDATE runs SET finished_at=?, outcome=?, files_read=?, files_skipped=?, files_removed=?, errors=?, "
            "series_added=?, series_changed=?, series_removed=? WHERE id=?",
            (time.time(), outcome, *counts.values(), len(self.added - self.removed),
             len(self.changed - self.added - self.removed), len(self.removed - self.added), self.run_id))

    def known(self, paths: Sequence[str]) -> dict[str, tuple[int, int]]:
        """(size, mtime_ns) of the given paths that are already in the index with every field.

        A row an older version wrote without the fields read today (`FIELDS_VERSION`) is left out,
        so the file is read again; a file that could not be read (its error) has nothing to add.
        """
        found: dict[str, tuple[int, int]] = {}
        for chunk in _chunks([stored(p) for p in paths]):
            marks = ",".join("?" * len(chunk))
            for path, size, mtime in self.conn.execute(
                    f"SELECT path, size, mtime_ns FROM files WHERE path IN ({marks}) "
                    f"AND (fields_version >= {FIELDS_VERSION} OR error IS NOT NULL)", chunk):
                found[loaded(path)] = (size, mtime)
        return found

    def mark_seen(self, paths: Sequence[str]) -> None:
        """Record that unchanged files were seen by this run (so they are not removed as gone)."""
        with transaction(self.conn):
            self.conn.executemany("UPDATE files SET seen_run=? WHERE path=?",
                                  ((self.run_id, stored(p)) for p in paths))

    def write(self, results: Sequence[tuple], unread: Sequence[str] = ()) -> list[tuple[str, str]]:
        """Store a batch of `(FileEntry, record or None, error or None)` in one transaction.

        `unread`: paths the run could not read this time; rows they have are only marked seen.
        No record can fail the batch: one SQLite refuses is stored as a file with its error, and
        returned among `(path, error)` so that it is counted. The writer's mistakes a record notes
        (see `headers`) go to the log at debug level.
        """
        refused: list[tuple[str, str]] = []
        with transaction(self.conn):
            if unread:
                self.conn.executemany("UPDATE files SET seen_run=? WHERE path=?",
                                      ((self.run_id, stored(p)) for p in unread))
            try:
                with savepoint(self.conn):
                    self._note(*self._store(results))
            except RECORD_ERRORS:
                for one in results:  # the batch again, record by record: only the refused one is lost
                    entry = one[0]
                    try:
                        with savepoint(self.conn):
                            self._note(*self._store([one]))
                    except RECORD_ERRORS as exc:
                        reason = f"the index refused a value of this file ({type(exc).__name__}: {exc})"[:300]
                        log.warning("NAS indexing: %s: %s", escaped(entry.path), reason)
                        refused.append((entry.path, reason))
                        try:
                            with savepoint(self.conn):
                                self._note(*self._store([(entry, None, reason)]))
                        except RECORD_ERRORS:
                            pass  # not even its path: it is read again next run
        for entry, record, _ in results:
            for note in (record or {}).get("notes") or ():
                log.debug("NAS indexing: %s: %s (the writer's mistake; read anyway)", escaped(entry.path), note)
        return refused

    def _note(self, added: set[str], dirty: set[str]) -> None:
        """Count what a stored batch did to series (for the run's `series_added`, `series_changed`)."""
        self.added.update(added)
        self.changed.update(dirty)

    def _store(self, results: Sequence[tuple]) -> tuple[set[str], set[str]]:
        """Store records; returns the series keys it added, and those it touched."""
        dirty = self._old_keys([entry.path for entry, _, _ in results])
        series_rows = {}
        file_rows = []
        for entry, record, error in results:
            key = None
            if record is not None:
                key = series_key(record, entry.path)
                series_rows[key] = tuple(sqlite_value(v) for v in (
                    *(record.get(f) for f in (*SERIES_FIELDS, *NODE_SERIES_FIELDS)), *search_columns(record)))
                dirty.add(key)
            file_rows.append((stored(entry.path), entry.size, entry.mtime_ns, key,
                              sqlite_value(record and record.get("SOPInstanceUID")),
                              sqlite_value(record and record.get("InstanceNumber")),
                              *(sqlite_value((record or {}).get(f)) for f in NODE_FILE_FIELDS), FIELDS_VERSION,
                              sqlite_value(error), self.run_id))
        file_fields = ("size", "mtime_ns", "series_key", "SOPInstanceUID", "InstanceNumber", *NODE_FILE_FIELDS,
                       "fields_version", "error", "seen_run")
        self.conn.executemany(
            f"INSERT INTO files(path, {', '.join(file_fields)}) VALUES (?{',?' * len(file_fields)}) "
            f"ON CONFLICT(path) DO UPDATE SET {', '.join(f'{f}=excluded.{f}' for f in file_fields)}",
            file_rows)
        added = set(series_rows) - self._existing(list(series_rows))
        stored_fields = (*SERIES_FIELDS, *NODE_SERIES_FIELDS, "search_text", "sort_name")
        columns = ", ".join(stored_fields)
        updates = ", ".join(f"{f}=excluded.{f}" for f in stored_fields)
        self.conn.executemany(
            f"INSERT INTO series(series_key, {columns}) VALUES (?{',?' * len(stored_fields)}) "
            f"ON CONFLICT(series_key) DO UPDATE SET {updates}",
            ((key, *values) for key, values in series_rows.items()))
        self._recount(dirty)
        return added, dirty

    def remove_unseen(self, folder: str = "", covered: Callable[[str], bool] | None = None) -> int:
        """Remove files this run did not see, within `folder` ("" for all) and, with `covered`, only
        paths it accepts (those the walk would have listed). Call only after a complete, error-free
        enumeration."""
        with transaction(self.conn):
            inside = "AND substr(path, 1, ?) = ?" if folder else ""
            args = (self.run_id, len(folder) + 1, folder + "/") if folder else (self.run_id,)
            rows = [(path, key) for path, key in self.conn.execute(
                f"SELECT path, series_key FROM files WHERE seen_run < ? {inside}", args)
                if covered is None or covered(loaded(path))]
            for chunk in _chunks([path for path, _ in rows]):
                self.conn.execute(f"DELETE FROM files WHERE path IN ({','.join('?' * len(chunk))})", chunk)
            dirty = {key for _, key in rows if key is not None}
            self.changed.update(dirty)
            self._recount(dirty)
        return len(rows)

    def _existing(self, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(keys):
            found.update(row[0] for row in self.conn.execute(
                f"SELECT series_key FROM series WHERE series_key IN ({','.join('?' * len(chunk))})", chunk))
        return found

    def _old_keys(self, paths: Sequence[str]) -> set[str]:
        keys: set[str] = set()
        for chunk in _chunks([stored(p) for p in paths]):
            marks = ",".join("?" * len(chunk))
            keys.update(row[0] for row in self.conn.execute(
                f"SELECT series_key FROM files WHERE path IN ({marks}) AND series_key IS NOT NULL", chunk))
        return keys

    def _recount(self, keys: set[str]) -> None:
        for chunk in _chunks(sorted(keys)):
            marks = ",".join("?" * len(chunk))
            self.conn.execute(
                f"UPDATE series SET file_count=(SELECT count(*) FROM files WHERE files.series_key=series.series_key) "
                f"WHERE series_key IN ({marks})", chunk)
            self.removed.update(row[0] for row in self.conn.execute(
                f"SELECT series_key FROM series WHERE file_count=0 AND series_key IN ({marks})", chunk))
            self.conn.execute(f"DELETE FROM series WHERE file_count=0 AND series_key IN ({marks})", chunk)

    def series_count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM series").fetchone()[0]

    def close(self) -> None:
        self.conn.close()
