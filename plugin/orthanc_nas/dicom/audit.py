"""The audit of the DICOM node: every C-MOVE and C-GET, in `dicom.db` (SQLite) of the DataDirectory,
or the `Database` PostgreSQL (see `store`).

One row per retrieval: when, who asked (calling AE title and address), the operation and its
destination, the level and the keys of the identifier, how many files it selected, sent and failed,
how it ended (`done`, `cancelled`, `failed`, `refused`) and the first failure reasons.

While the database is down (PostgreSQL: `store.DatabaseUnavailable`), finished retrievals wait in memory
(at most `MAX_UNWRITTEN`, the oldest dropped first; lost if Orthanc stops meanwhile) and are written, in
their order, before the next one or by the next read of the audit.
"""

from __future__ import annotations

import collections
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field

from .. import store
from ..catalog import migrate
from ..search import integer_parameter
from ..status import iso

AUDIT_NAME = "dicom.db"

MIGRATIONS: list[str] = [
    # 1: retrievals
    """
    CREATE TABLE retrievals (
        id INTEGER PRIMARY KEY,
        started_at REAL NOT NULL,
        finished_at REAL,
        caller_aet TEXT NOT NULL,
        caller_address TEXT NOT NULL,
        operation TEXT NOT NULL,
        destination TEXT,
        level TEXT,
        keys TEXT NOT NULL,
        files INTEGER NOT NULL DEFAULT 0,
        sent INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        outcome TEXT,
        detail TEXT
    );
    """,
]
#: failure reasons kept per retrieval
MAX_REASONS = 5
#: `GET /nas/dicom/retrievals?limit=`: default and largest
LIST_LIMIT, MAX_LIST_LIMIT = 100, 1000
#: finished retrievals kept in memory while the audit's database cannot be reached
MAX_UNWRITTEN = 1000
_INSERT = ("INSERT INTO retrievals(started_at, finished_at, caller_aet, caller_address, operation, destination, "
           "level, keys, files, sent, failed, outcome, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id")


def parse_listing(query: dict[str, str]) -> int:
    """The `limit` of `GET /nas/dicom/retrievals` (1 to 1000, default 100); 400 naming it when it is not
    such a number (the router refuses other parameters)."""
    given = {k: v.strip() for k, v in query.items() if v is not None and v.strip()}
    return integer_parameter(given, "limit", LIST_LIMIT, 1, MAX_LIST_LIMIT)


def listed(item: dict) -> dict:
    """A row of `latest` as the REST route answers it: times in ISO 8601 (UTC)."""
    return {**item, "started_at": iso(item["started_at"]), "finished_at": iso(item["finished_at"])}


@dataclass
class Retrieval:
    """One C-MOVE or C-GET as the audit records it."""

    caller_aet: str
    caller_address: str
    operation: str  # "C-MOVE" or "C-GET"
    destination: str | None
    level: str | None
    keys: dict
    files: int = 0
    attempted: int = 0  # sub-operations handed to pynetdicom
    sent: int = 0
    failed: int = 0
    outcome: str = "failed"
    written: bool = False  # recorded already (before the final response, so a peer that reads the audit
    # once its C-MOVE/C-GET ended finds the row)
    reasons: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.time)
    keep_back: bool = False  # the retrieval found the database down: its row is kept back without trying

    def fail(self, reason: str) -> None:
        if len(self.reasons) < MAX_REASONS and reason not in self.reasons:
            self.reasons.append(reason)


class RetrievalAudit:
    """`dicom.db`: one connection, shared by the associations' threads under a lock (a row per retrieval:
    writes are rare, and connections made and dropped with each association thread are not worth it)."""

    def __init__(self, data_dir: str, engine: store.Engine | None = None):
        self.path = os.path.join(data_dir, AUDIT_NAME)
        self.engine = engine or store.default_engine(data_dir)
        self._lock = threading.Lock()
        self._connection: sqlite3.Connection | None = None
        self._unwritten: collections.deque[tuple] = collections.deque(maxlen=MAX_UNWRITTEN)

    def _conn(self) -> sqlite3.Connection:
        """The connection, opened (and migrated) on first use; call with the lock held."""
        if self._connection is None:
            conn = self.engine.connect("dicom")
            migrate(conn, MIGRATIONS, "dicom")
            conn.row_factory = sqlite3.Row
            self._connection = conn
        return self._connection

    def record(self, r: Retrieval) -> int:
        """Write one finished retrieval (after any kept back); returns its id. Raises
        `store.DatabaseUnavailable` when the database is down, or `r.keep_back` says so (no second wait of
        `store.CONNECT_TIMEOUT` before the peer's answer): the row is kept, to be written later."""
        row = (r.started_at, time.time(), r.caller_aet, r.caller_address, r.operation, r.destination, r.level,
               json.dumps(r.keys, ensure_ascii=False), r.files, r.sent, r.failed, r.outcome,
               "; ".join(r.reasons) or None)
        with self._lock:
            self._unwritten.append(row)
            if r.keep_back:
                raise store.DatabaseUnavailable("the NAS index's database could not be reached by this retrieval")
            try:
                return self._write_unwritten()
            except store.DatabaseUnavailable:
                raise
            except Exception:  # not a lost database: this row is not kept
                if row in self._unwritten:
                    self._unwritten.remove(row)
                raise

    def _write_unwritten(self) -> int | None:
        """Write the rows kept back, oldest first; the id of the last. Call with the lock held."""
        last = None
        while self._unwritten:
            last = self._conn().execute(_INSERT, self._unwritten[0]).fetchone()[0]
            self._unwritten.popleft()
        return last

    def latest(self, limit: int = LIST_LIMIT) -> list[dict]:
        """The latest retrievals, newest first, `keys` as an object; times in seconds since the epoch."""
        with self._lock:
            self._write_unwritten()
            rows = self._conn().execute("SELECT * FROM retrievals ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        found = []
        for row in rows:
            item = dict(row)
            item["keys"] = json.loads(item["keys"])
            found.append(item)
        return found

    def totals(self) -> tuple[int, int, int]:
        """`(retrievals, files sent, files failed)` over the whole audit (for Orthanc's metrics)."""
        with self._lock:
            self._write_unwritten()
            return tuple(self._conn().execute(
                "SELECT count(*), coalesce(sum(sent), 0), coalesce(sum(failed), 0) FROM retrievals").fetchone())

    def close(self) -> None:
        with self._lock:
            conn, self._connection = self._connection, None
        if conn is not None:
            try:
                conn.close()
            except (sqlite3.Error, store.DatabaseUnavailable):
                pass
