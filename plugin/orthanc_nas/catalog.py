"""The index: `index.db`, an SQLite database in WAL mode (or the `index` part of PostgreSQL, see `store`).

One row per file (path relative to the NAS root, size, mtime, the per-file
attributes, the error if it could not be read, the run that last saw it) and
one row per series (its attributes, file count and the folded text searches
look in, see `normalize`). Schema changes go through
numbered migrations (`catalog_migrations`) recorded in `PRAGMA user_version`, so an index made by an
older version opens in a newer one.

This module holds what reading and writing share (the fields, `series_key`, connections, `migrate`,
transactions) and the reader, `Catalog`; the writer is `catalog_writer.CatalogWriter`.

Paths are kept as `pathnames.stored` gives them (raw bytes for a name that is not UTF-8).
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import stat
import threading
from collections.abc import Iterable, Sequence
from contextlib import contextmanager

from . import store, store_dialects
from .catalog_migrations import MIGRATIONS, Migration
from .errors import NotFound
from .pathnames import loaded

INDEX_NAME = "index.db"

#: where series are counted: the narrow copy of their text (migration 9), a fifth of `series`' pages
SERIES_COUNTED = "series_text"

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
    conn.execute(store_dialects.dialect(conn).begin_snapshot)
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


def chunks(items: Sequence, size: int = 500) -> Iterable[Sequence]:
    """`items` in slices of at most `size` (the values of one `IN (…)` within SQLite's parameter limit)."""
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
        series = conn.execute(f"SELECT count(*) FROM {SERIES_COUNTED}").fetchone()[0]
        return {"files": files, "series": series}

    def series_rows(self, keys: Sequence[str]) -> dict[str, sqlite3.Row]:
        """The series rows of the given keys that are in the index (missing keys are left out)."""
        found: dict[str, sqlite3.Row] = {}
        for chunk in chunks(list(keys)):
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
