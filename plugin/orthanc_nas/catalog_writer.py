"""The index's writer: `CatalogWriter` stores one indexing run, batch by batch, from one thread.

Each batch is one transaction that updates files and their series together, so a reader (WAL gives
readers a snapshot) never sees a half-written series. Whatever a file holds, it cannot fail its batch:
values are made SQLite-safe before the write (`sqlite_value`), and a batch SQLite still refuses is
written again record by record, the refused record kept as a file with its error.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

from . import store_dialects
from .catalog import (
    FIELDS_VERSION,
    NODE_FILE_FIELDS,
    NODE_SERIES_FIELDS,
    RUNS_KEPT,
    SERIES_COUNTED,
    SERIES_FIELDS,
    Catalog,
    chunks,
    savepoint,
    series_key,
    transaction,
)
from .catalog_migrations import search_columns
from .pathnames import escaped, loaded, stored

log = logging.getLogger("orthanc_nas")

INT64_MIN, INT64_MAX = -2**63, 2**63 - 1  # SQLite's INTEGER

#: what SQLite may refuse in one record's values (not the database's own trouble: locked, full, corrupt)
RECORD_ERRORS = (OverflowError, UnicodeError, ValueError, TypeError, *store_dialects.SQLITE_DIALECT.value_errors,
                 *store_dialects.PG_DIALECT.value_errors)


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
        for chunk in chunks([stored(p) for p in paths]):
            marks = ",".join("?" * len(chunk))
            for path, size, mtime in self.conn.execute(
                    f"SELECT path, size, mtime_ns FROM files WHERE path IN ({marks}) "
                    f"AND (fields_version >= {FIELDS_VERSION} OR error IS NOT NULL)", chunk):
                found[loaded(path)] = (size, mtime)
        return found

    def mark_seen(self, paths: Sequence[str]) -> None:
        """Record that unchanged files were seen by this run (so they are not removed as gone)."""
        with transaction(self.conn):
            self._seen(paths)

    def write(self, results: Sequence[tuple], unread: Sequence[str] = ()) -> list[tuple[str, str]]:
        """Store a batch of `(FileEntry, record or None, error or None)` in one transaction.

        `unread`: paths the run could not read this time; rows they have are only marked seen.
        No record can fail the batch: one SQLite refuses is stored as a file with its error, and
        returned among `(path, error)` so that it is counted. The writer's mistakes a record notes
        (see `headers`) go to the log at debug level.
        """
        refused: list[tuple[str, str]] = []
        try:  # no savepoint in the common case: two round trips less per batch on PostgreSQL
            with transaction(self.conn):
                self._seen(unread)
                self._note(*self._store(results))
        except RECORD_ERRORS:  # the batch undone; again, record by record: only the refused one is lost
            with transaction(self.conn):
                self._seen(unread)
                for one in results:
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

    def _seen(self, paths: Sequence[str]) -> None:
        if paths:
            self.conn.executemany("UPDATE files SET seen_run=? WHERE path=?", ((self.run_id, stored(p)) for p in paths))

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
            for chunk in chunks([path for path, _ in rows]):
                self.conn.execute(f"DELETE FROM files WHERE path IN ({','.join('?' * len(chunk))})", chunk)
            dirty = {key for _, key in rows if key is not None}
            self.changed.update(dirty)
            self._recount(dirty)
        return len(rows)

    def _existing(self, keys: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in chunks(keys):
            found.update(row[0] for row in self.conn.execute(
                f"SELECT series_key FROM series WHERE series_key IN ({','.join('?' * len(chunk))})", chunk))
        return found

    def _old_keys(self, paths: Sequence[str]) -> set[str]:
        keys: set[str] = set()
        for chunk in chunks([stored(p) for p in paths]):
            marks = ",".join("?" * len(chunk))
            keys.update(row[0] for row in self.conn.execute(
                f"SELECT series_key FROM files WHERE path IN ({marks}) AND series_key IS NOT NULL", chunk))
        return keys

    def _recount(self, keys: set[str]) -> None:
        for chunk in chunks(sorted(keys)):
            marks = ",".join("?" * len(chunk))
            empty = [key for key, count in self.conn.execute(
                f"UPDATE series SET file_count=(SELECT count(*) FROM files WHERE files.series_key=series.series_key) "
                f"WHERE series_key IN ({marks}) RETURNING series_key, file_count", chunk).fetchall() if count == 0]
            if empty:  # one statement less per batch when none empties (a round trip on PostgreSQL)
                self.removed.update(empty)
                self.conn.execute(f"DELETE FROM series WHERE series_key IN ({','.join('?' * len(empty))})", empty)

    def series_count(self) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {SERIES_COUNTED}").fetchone()[0]

    def close(self) -> None:
        self.conn.close()
