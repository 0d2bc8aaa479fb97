"""Jobs of retrieval and what they imported: the `jobs` part of the storage layer (`store`): `jobs.db` in
the DataDirectory on SQLite, tables of the `Database` on PostgreSQL, shared by every node there.

A job (`POST /nas/retrieve`) copies NAS series into Orthanc or sends them to a DICOM modality.
Its row holds what `GET /nas/jobs` answers: state, counts, the first failure reasons, the node that
runs it and, once done, the Orthanc IDs and viewer links. The node that accepted a job runs it;
any node lists every job, and cancels any (`cancel_requested`, which the running node reads within
`WATCH` seconds). While a node has jobs pending or running it beats (`heartbeat`) every `BEAT` seconds.

A job found `running` or `pending` when a node starts was cut off by a stop of Orthanc: the node marks
its own so (`failed`, as the indexer's `interrupted`), and with several nodes also those whose node
stopped beating `LEASE` seconds ago (killed, or gone for good); the nodes sweep those every
`SWEEP_EVERY` seconds too. A node is known by its host and DataDirectory (`node_name`), the same
across restarts.

`imported` holds one row per instance the plugin stored in Orthanc that Orthanc did not have before,
with the MD5 Orthanc computed of it then: `ImportRetentionHours` deletes only those, and only while
their MD5 is unchanged (see `retention`).

Schema changes go through numbered migrations, as for the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Callable, Sequence

from . import store
from .background import BackgroundThread
from .errors import BadRequest, NotFound
from .status import iso

log = logging.getLogger("orthanc_nas")

JOBS_NAME = "jobs.db"
MAX_SERIES = 1000
MAX_SAMPLES = 10  # failure reasons kept per job
ORTHANC = "orthanc"
PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
LIVE = (PENDING, RUNNING)
WATCH = 1.0  # seconds between two looks for cancellations asked on other nodes
BEAT = 5.0  # seconds between two heartbeats of a node's live jobs
LEASE = 30.0  # seconds without a heartbeat after which a live job's node counts as gone
SWEEP_EVERY = 10.0  # seconds between two sweeps of jobs whose node is gone (several nodes only)

STOPPED_HERE = {"error": "Orthanc stopped while this job was pending or running", "kind": "internal",
                "hint": "Start the retrieval again: instances already in Orthanc are skipped."}
NODE_GONE = {"error": "the Orthanc node running this job stopped answering", "kind": "internal",
             "hint": "Start the retrieval again (on any node): instances already in Orthanc are skipped."}


def node_name(data_dir: str) -> str:
    """This node as its jobs record it: the host, and a digest of its DataDirectory (two Orthancs on one
    host have two). The same after a restart, so a node finds its own cut-off jobs."""
    digest = hashlib.sha256(os.path.abspath(data_dir).encode()).hexdigest()[:6]
    return f"{socket.gethostname()}:{digest}"


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
    # 2: several nodes on one database: the node running each job, a cancellation asked on any node, the
    # running node's heartbeat (jobs made before: no node, found by the first start as its own)
    """
    ALTER TABLE jobs ADD COLUMN node TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN heartbeat REAL;
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
    """The jobs of one node (`node`), on `engine` (SQLite files in `data_dir` by default); one connection
    per thread. Database trouble on PostgreSQL raises `store.DatabaseUnavailable` (503)."""

    def __init__(self, data_dir: str, clock: Callable[[], float] = time.time, engine: store.Engine | None = None,
                 node: str | None = None):
        self.path = os.path.join(data_dir, JOBS_NAME)
        self.engine = engine or store.default_engine(data_dir)
        self.node = node or node_name(data_dir)
        self.clock = clock
        self._connections = store.ThreadConnections(self.engine, "jobs", MIGRATIONS)
        self._conn = self._connections.get

    # -- jobs -------------------------------------------------------------------
    def interrupted(self) -> int:
        """At start: mark failed the live jobs a stop of this node cut off (on SQLite: every live job, this
        node is the only one), and with several nodes those of gone nodes (`orphaned`); returns how many."""
        where, args = "state IN (?, ?)", [PENDING, RUNNING]
        if self.engine.shared:
            where, args = where + " AND node IN (?, '')", [*args, self.node]  # '': made before nodes were recorded
        cur = self._conn().execute(f"UPDATE jobs SET state=?, finished_at=?, failure=? WHERE {where}",
                                   (FAILED, self.clock(), json.dumps(STOPPED_HERE), *args))
        return cur.rowcount + (self.orphaned() if self.engine.shared else 0)

    def orphaned(self) -> int:
        """Mark failed the live jobs no node beat for `LEASE` seconds (their node was killed, or is gone for
        good; or this node could not mark its own at start); returns how many."""
        now = self.clock()
        return self._conn().execute(
            "UPDATE jobs SET state=?, finished_at=?, failure=? WHERE state IN (?, ?) "
            "AND coalesce(heartbeat, created_at) < ?",
            (FAILED, now, json.dumps(NODE_GONE), PENDING, RUNNING, now - LEASE)).rowcount

    def beat(self, job_ids: Sequence[str]) -> None:
        """This node still runs these jobs (see `orphaned`)."""
        ids = list(job_ids)
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            self._conn().execute(f"UPDATE jobs SET heartbeat=? WHERE id IN ({','.join('?' * len(chunk))}) "
                                 "AND state IN (?, ?)", (self.clock(), *chunk, PENDING, RUNNING))

    def cancels_asked(self) -> list[str]:
        """The ids of this node's live jobs that a node asked to cancel."""
        return [row[0] for row in self._conn().execute(
            "SELECT id FROM jobs WHERE node=? AND cancel_requested=1 AND state IN (?, ?)",
            (self.node, PENDING, RUNNING))]

    def request_cancel(self, job_id: str) -> None:
        """Cancel a job from any node: a pending one at once, a running one by its node (`cancels_asked`)."""
        conn = self._conn()
        conn.execute("UPDATE jobs SET cancel_requested=1 WHERE id=? AND state IN (?, ?)", (job_id, PENDING, RUNNING))
        conn.execute("UPDATE jobs SET state=?, finished_at=? WHERE id=? AND state=?",
                     (CANCELLED, self.clock(), job_id, PENDING))

    def start(self, job_id: str) -> bool:
        """A pending job turns running; False if it is not pending any more (cancelled meanwhile)."""
        return self._conn().execute("UPDATE jobs SET state=?, started_at=?, heartbeat=? WHERE id=? AND state=?",
                                    (RUNNING, self.clock(), self.clock(), job_id, PENDING)).rowcount == 1

    def create(self, series: Sequence[str], destination: str, files_total: int) -> str:
        """A new pending job of this node; its id."""
        job_id = secrets.token_hex(8)
        now = self.clock()
        self._conn().execute(
            "INSERT INTO jobs(id, state, destination, series, created_at, files_total, node, heartbeat) "
            "VALUES (?,?,?,?,?,?,?,?)",
            (job_id, PENDING, destination, json.dumps(list(series)), now, files_total, self.node, now))
        return job_id

    def update(self, job_id: str, **values) -> None:
        """Set columns of a job; lists and dicts are stored as JSON."""
        self._update(job_id, "", (), values)

    def save_progress(self, job_id: str, **values) -> None:
        """Set a running job's progress; nothing once it ended. One statement: a progress read before the
        job's last file (a request's view of a live job) never lands over the final counts."""
        self._update(job_id, " AND state=?", (RUNNING,), values)

    def _update(self, job_id: str, condition: str, condition_args: tuple, values: dict) -> None:
        if not values:
            return
        for key in ("error_samples", "failure", "orthanc", "viewers"):
            if key in values and values[key] is not None:
                values[key] = json.dumps(values[key], ensure_ascii=False)
        columns = ", ".join(f"{name}=?" for name in values)
        self._conn().execute(f"UPDATE jobs SET {columns} WHERE id=?{condition}",
                             (*values.values(), job_id, *condition_args))

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

    def totals(self) -> list[tuple[str, int, int, int, int]]:
        """Per state: `(state, jobs, files done, files failed, bytes)` (for Orthanc's metrics)."""
        rows = self._conn().execute("SELECT state, count(*), coalesce(sum(files_done), 0), "
                                    "coalesce(sum(files_failed), 0), coalesce(sum(bytes), 0) FROM jobs GROUP BY state")
        return [tuple(row) for row in rows]

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
            "viewers": json.loads(row["viewers"]), "node": row["node"] or None,
        }
        if row["failure"]:
            answer["failure"] = json.loads(row["failure"])
        return answer

    # -- what was imported --------------------------------------------------------
    def imported(self, job_id: str, orthanc_id: str, series_id: str, sop_instance: str, md5: str | None) -> None:
        now = self.clock()
        self._conn().execute(
            "INSERT INTO imported(orthanc_id, series_id, sop_instance, md5, job_id, imported_at, retrieved_at) "
            "VALUES (?,?,?,?,?,?,?) ON CONFLICT(orthanc_id) DO UPDATE SET series_id=excluded.series_id, "
            "sop_instance=excluded.sop_instance, md5=excluded.md5, job_id=excluded.job_id, "
            "imported_at=excluded.imported_at, retrieved_at=excluded.retrieved_at",
            (orthanc_id, series_id, sop_instance, md5, job_id, now, now))

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
        self._connections.close()


class JobWatch(BackgroundThread):
    """A thread of one node, every `WATCH` seconds: while `live()` names jobs this node runs or queues,
    `cancel(id)` those a node asked to cancel, and `JobStore.beat` them every `BEAT` seconds; with several nodes,
    `JobStore.orphaned` every `SWEEP_EVERY` seconds. Database trouble is logged; the next turn tries again."""

    name = "nas-job-watch"

    def __init__(self, jobs: JobStore, live: Callable[[], Sequence[str]], cancel: Callable[[str], None]):
        super().__init__()
        self.jobs, self.live, self.cancel = jobs, live, cancel

    def _loop(self) -> None:
        beaten, swept = time.monotonic(), 0.0
        while not self._stop.wait(WATCH):
            now = time.monotonic()
            try:
                if live := self.live():
                    for job_id in self.jobs.cancels_asked():
                        self.cancel(job_id)
                    if now - beaten >= BEAT:
                        beaten = now
                        self.jobs.beat(live)
                if self.jobs.engine.shared and now - swept >= SWEEP_EVERY:
                    swept = now
                    if failed := self.jobs.orphaned():
                        log.warning("%d job(s) of retrieval of a node that stopped answering: marked failed", failed)
            except store.DatabaseUnavailable as exc:
                log.warning("jobs of retrieval: %s", exc.message)
            except Exception:
                log.exception("jobs of retrieval: the watch failed; it goes on")
