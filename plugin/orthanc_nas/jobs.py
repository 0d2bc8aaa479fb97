"""Jobs of retrieval and what they imported: `jobs.db` (SQLite) of the DataDirectory.

A job (`POST /nas/retrieve`) copies NAS series into this Orthanc or sends them to a DICOM modality.
Its row holds what `GET /nas/jobs` answers: state, counts, the first failure reasons and, once done,
the Orthanc IDs and viewer links. A job found `running` or `pending` when the plugin starts was cut
off by a stop of Orthanc: it is marked `failed` with that reason (as the indexer's `interrupted`).

`imported` holds one row per instance the plugin stored in Orthanc that Orthanc did not have before,
with the MD5 Orthanc computed of it then: `ImportRetentionHours` deletes only those, and only while
their MD5 is unchanged (see `retention`).

Schema changes go through numbered migrations, as for the index.
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence

from .catalog import connect, migrate
from .errors import BadRequest, NotFound
from .status import iso

JOBS_NAME = "jobs.db"
MAX_SERIES = 1000
MAX_SAMPLES = 10  # failure reasons kept per job
ORTHANC = "orthanc"
PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
LIVE = (PENDING, RUNNING)

MIGRATIONS: list[str] = [
    # 1: jobs of retrieval and the instances they imported into Orthanc
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        destination TEXT NOT NULL,
        series TEXT NOT NULL,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        files_total INTEGER NOT NULL DEFAULT 0,
        files_done INTEGER NOT NULL DEFAULT 0,
        files_skipped INTEGER NOT NULL DEFAULT 0,
        files_failed INTEGER NOT NULL DEFAULT 0,
        bytes INTEGER NOT NULL DEFAULT 0,
        error_samples TEXT NOT NULL DEFAULT '[]',
        failure TEXT,
        orthanc TEXT,
        viewers TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX jobs_by_state ON jobs(state);
    CREATE TABLE imported (
        orthanc_id TEXT PRIMARY KEY,
        series_id TEXT NOT NULL,
        sop_instance TEXT NOT NULL,
        md5 TEXT,
        job_id TEXT NOT NULL,
        imported_at REAL NOT NULL,
        retrieved_at REAL NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX imported_by_time ON imported(retrieved_at);
    """,
]


def parse_retrieve_request(body: dict) -> tuple[list[str], str]:
    """(series keys, destination) of a `POST /nas/retrieve` body; 400 naming the field otherwise."""
    unknown = set(body) - {"series", "to"}
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r} in the body",
                         'The body is {"series": ["<series_key>", ...], "to": "orthanc" or "<modality>"}.',
                         field=sorted(unknown)[0])
    series = body.get("series")
    if not isinstance(series, list) or not series or not all(isinstance(k, str) and k for k in series):
        raise BadRequest("field 'series' must be a non-empty list of series keys",
                         'Give the series_key values found by GET /nas/search, e.g. {"series": ["..."]}.',
                         field="series")
    if len(series) > MAX_SERIES:
        raise BadRequest(f"field 'series' holds more than {MAX_SERIES} series", "Retrieve fewer series at once.",
                         field="series")
    to = body.get("to", ORTHANC)
    if not isinstance(to, str) or not to.strip():
        raise BadRequest("field 'to' must be \"orthanc\" or the id of a DICOM modality",
                         "GET /nas/destinations lists them.", field="to")
    return list(dict.fromkeys(series)), to.strip()


class JobStore:
    """`jobs.db` of one DataDirectory; one connection per thread."""

    def __init__(self, data_dir: str, clock: Callable[[], float] = time.time):
        self.path = os.path.join(data_dir, JOBS_NAME)
        self.clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            conn = connect(self.path)
            migrate(conn, MIGRATIONS)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    # -- jobs -------------------------------------------------------------------
    def interrupted(self) -> int:
        """Mark the jobs a stop of Orthanc cut off as failed (at start); returns how many."""
        reason = json.dumps({"error": "Orthanc stopped while this job was pending or running", "kind": "internal",
                             "hint": "Start the retrieval again: instances already in Orthanc are skipped."})
        cur = self._conn().execute(
            "UPDATE jobs SET state=?, finished_at=?, failure=? WHERE state IN (?, ?)",
            (FAILED, self.clock(), reason, PENDING, RUNNING))
        return cur.rowcount

    def create(self, series: Sequence[str], destination: str, files_total: int) -> str:
        job_id = secrets.token_hex(8)
        self._conn().execute(
            "INSERT INTO jobs(id, state, destination, series, created_at, files_total) VALUES (?,?,?,?,?,?)",
            (job_id, PENDING, destination, json.dumps(list(series)), self.clock(), files_total))
        return job_id

    def update(self, job_id: str, **values) -> None:
        """Set columns of a job; lists and dicts are stored as JSON."""
        if not values:
            return
        for key in ("error_samples", "failure", "orthanc", "viewers"):
            if key in values and values[key] is not None:
                values[key] = json.dumps(values[key], ensure_ascii=False)
        columns = ", ".join(f"{name}=?" for name in values)
        self._conn().execute(f"UPDATE jobs SET {columns} WHERE id=?", (*values.values(), job_id))

    def state(self, job_id: str) -> str | None:
        row = self._conn().execute("SELECT state FROM jobs WHERE id=?", (job_id,)).fetchone()
        return row["state"] if row else None

    def describe(self, job_id: str) -> dict:
        """One job as `GET /nas/jobs/{id}` answers it; 404 if unknown."""
        row = self._conn().execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job with id {job_id!r}"[:200], "GET /nas/jobs lists the jobs.")
        return self._answer(row)

    def list(self, limit: int = 100) -> list[dict]:
        """The latest jobs, newest first."""
        rows = self._conn().execute("SELECT * FROM jobs ORDER BY created_at DESC, id LIMIT ?", (limit,))
        return [self._answer(row) for row in rows]

    def _answer(self, row: sqlite3.Row) -> dict:
        started, finished = row["started_at"], row["finished_at"]
        elapsed = ((finished or self.clock()) - started) if started else 0
        moved = row["files_done"] - row["files_skipped"]
        answer = {
            "id": row["id"], "state": row["state"], "to": row["destination"], "series": json.loads(row["series"]),
            "files_total": row["files_total"], "files_done": row["files_done"],
            "files_skipped": row["files_skipped"], "files_failed": row["files_failed"], "bytes": row["bytes"],
            "files_per_second": round(moved / elapsed, 1) if elapsed > 0 else 0.0,
            "error_samples": json.loads(row["error_samples"]),
            "created_at": iso(row["created_at"]), "started_at": iso(started), "finished_at": iso(finished),
            "orthanc": json.loads(row["orthanc"]) if row["orthanc"] else None,
            "viewers": json.loads(row["viewers"]),
        }
        if row["failure"]:
            answer["failure"] = json.loads(row["failure"])
        return answer

    # -- what was imported --------------------------------------------------------
    def imported(self, job_id: str, orthanc_id: str, series_id: str, sop_instance: str, md5: str | None) -> None:
        now = self.clock()
        self._conn().execute(
            "INSERT OR REPLACE INTO imported(orthanc_id, series_id, sop_instance, md5, job_id, imported_at, "
            "retrieved_at) VALUES (?,?,?,?,?,?,?)", (orthanc_id, series_id, sop_instance, md5, job_id, now, now))

    def retrieved_again(self, orthanc_ids: Sequence[str]) -> None:
        """Instances a job found already in Orthanc: those the plugin imported count from now again."""
        now = self.clock()
        conn = self._conn()
        for start in range(0, len(orthanc_ids), 500):
            chunk = list(orthanc_ids[start:start + 500])
            conn.execute(f"UPDATE imported SET retrieved_at=? WHERE orthanc_id IN ({','.join('?' * len(chunk))})",
                         (now, *chunk))

    def expired(self, before: float, limit: int = 1000) -> list[sqlite3.Row]:
        """Imported instances last retrieved before `before` (seconds since the epoch)."""
        return self._conn().execute("SELECT * FROM imported WHERE retrieved_at < ? ORDER BY retrieved_at LIMIT ?",
                                    (before, limit)).fetchall()

    def forget(self, orthanc_id: str) -> None:
        self._conn().execute("DELETE FROM imported WHERE orthanc_id=?", (orthanc_id,))

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()
