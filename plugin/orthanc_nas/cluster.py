"""Several Orthanc nodes on one PostgreSQL index: one indexing run at a time for the whole cluster.

The run is one row of `cluster_run` (the index's migration 7): the node that runs it, whether it runs,
whether a stop was asked, its status (`GET /nas/status`'s object) and a heartbeat. The running node
rewrites the row whenever it rewrites its status file and at least every `HEARTBEAT` seconds; there it
also learns of a stop asked on another node.
Every other node taking part writes its own counters of the run into `run_nodes` (the index's migration 8), so
`GET /nas/status` on any node shows the whole run's counts, summed over the nodes (`combined`), less a node's counts of the work items another node took over
from it (`settled`: each file counts once). While another node runs the cluster's run, settings from
the web do not change on this one (`idle`, 409). A node that stops beating for `LEASE` seconds (killed) no
longer holds the run: the next start anywhere takes it over, and the status shows the run `interrupted`.

Used only with a shared engine (`Database.Type` postgresql); on SQLite one Orthanc owns its files.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from . import store
from .catalog import transaction
from .errors import Busy
from .status import MAX_ERROR_SAMPLES, RUNNING_PHASES, _parse_iso
from .store_dialects import dialect

log = logging.getLogger("orthanc_nas")

HEARTBEAT = 2.0  # seconds between two rewrites of the row while a run goes on
LEASE = 30.0  # seconds without a heartbeat after which a run's node counts as gone
#: the counters of a node's status that add up over the nodes of one run
SUMMED = ("enumerated_files", "files_processed", "files_skipped", "errors")


def combined(base: dict, parts: list[dict]) -> dict:
    """The status `base` (the coordinator's snapshot) with the other nodes' parts of the same run added:
    `SUMMED` counters, error samples (at most `MAX_ERROR_SAMPLES`), warnings, and the speed in files/s
    (while running: the sum of the running parts' rates; after: every file over the run's duration)."""
    data = dict(base)
    for part in parts:
        for key in SUMMED:
            data[key] = data.get(key, 0) + int(part.get(key) or 0)
        data["error_samples"] = (list(data.get("error_samples") or []) +
                                 list(part.get("error_samples") or []))[:MAX_ERROR_SAMPLES]
        data["warnings"] = list(dict.fromkeys([*(data.get("warnings") or []), *(part.get("warnings") or [])]))
    if data.get("running"):
        rate = (base.get("files_per_second") or 0) + sum(p.get("files_per_second") or 0 for p in parts
                                                         if p.get("phase") in RUNNING_PHASES)
        data["files_per_second"] = round(rate, 1)
        data["eta_seconds"] = round(max(data["enumerated_files"] - data["files_processed"], 0) / rate, 1) \
            if rate > 0 else None
    else:
        began, ended = _parse_iso(base.get("started_at")), _parse_iso(base.get("finished_at"))
        if began and ended and ended > began:
            data["files_per_second"] = round(data.get("files_processed", 0) / (ended - began), 1)
    return data


def settled(part: dict, held: list[dict]) -> dict:
    """A node's part of a run (`ClusterRunPart.part`) counting only what stays its own: its status's
    `SUMMED` counters less those of the items it lost (`lost`) and of the items it was reading when
    another node took them over (its `in_progress` but for `held`, the counters of the items it holds
    still). The other node reads those again and counts them in its own part: each file counts once."""
    data = {k: v for k, v in part.items() if k not in ("in_progress", "lost")}
    dropped = Counter(part.get("lost") or {})
    for *_, counts in part.get("in_progress") or []:
        dropped.update(counts)
    for counts in held:
        dropped.subtract(counts)
    for key in SUMMED:
        data[key] = max(int(data.get(key) or 0) - dropped[key], 0)
    return data


def node_name() -> str:
    """This node in the cluster: host, process and a few random characters (a restarted node is another)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"


class ClusterRun:
    """The cluster's run row, seen from one node. Database trouble is logged, never raised, except by `claim`."""

    def __init__(self, engine: store.Engine, node: str | None = None, *, heartbeat: float = HEARTBEAT,
                 lease: float = LEASE, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.node = node or node_name()
        self.heartbeat, self.lease, self.clock = heartbeat, lease, clock
        self._conn = None
        self._lock = threading.RLock()  # one statement at a time on the shared connection
        self._beating: threading.Event | None = None
        self.run_id: int | None = None  # the run this node coordinates (`set_run`)

    def conn(self):
        if self._conn is None:
            from .catalog import migrate

            conn = self.engine.connect("index")
            migrate(conn)
            self._conn = conn
        return self._conn

    # -- the running node -------------------------------------------------------
    def claim(self, snapshot: dict) -> str | None:
        """Take the run for this node; None when taken, else the node that runs one now (alive).

        Raises `DatabaseUnavailable` when the database cannot be reached (no run starts then)."""
        with self._lock:
            return self._claim(snapshot)

    def _claim(self, snapshot: dict) -> str | None:
        conn = self.conn()
        conn.execute("INSERT INTO cluster_run(id, node, running, stop_requested, heartbeat, status) "
                     "VALUES (1, '', 0, 0, 0, '{}') ON CONFLICT(id) DO NOTHING")
        now = self.clock()
        with transaction(conn):
            node, running, beat = conn.execute(
                f"SELECT node, running, heartbeat FROM cluster_run WHERE id=1{dialect(conn).for_update}"
            ).fetchone()
            if running and node != self.node and now - beat < self.lease:
                return node
            conn.execute("UPDATE cluster_run SET node=?, running=1, stop_requested=0, heartbeat=?, status=?, "
                         "run_id=NULL WHERE id=1", (self.node, now, json.dumps(snapshot)))
        self.run_id = None
        return None

    def beat(self, snapshot: Callable[[], dict], stop: Callable[[], None]) -> None:
        """Rewrite the row every `heartbeat` seconds from a thread of its own until `release`; `stop()` is
        called when another node asked the run to stop."""
        done = self._beating = threading.Event()

        def loop():
            while not done.wait(self.heartbeat):
                if self.publish(snapshot()):
                    stop()

        threading.Thread(target=loop, name="nas-cluster-heartbeat", daemon=True).start()

    def publish(self, snapshot: dict) -> bool:
        """Write this node's status into the row (while it holds the run); True when a stop was asked."""
        with self._lock:
            try:
                row = self.conn().execute(
                    "UPDATE cluster_run SET heartbeat=?, status=? WHERE id=1 AND node=? AND running=1 "
                    "RETURNING stop_requested", (self.clock(), json.dumps(snapshot), self.node)).fetchone()
            except store.DatabaseUnavailable as exc:
                log.warning("NAS cluster: the run's status could not be written: %s", exc.message)
                return False
        return bool(row and row[0])

    def publish_part(self, run_id: int, snapshot: dict) -> None:
        """Write this node's counters of run `run_id` (`run_nodes`); database trouble is logged."""
        with self._lock:
            try:
                self.conn().execute(
                    "INSERT INTO run_nodes(run_id, node, updated_at, status) VALUES (?,?,?,?) ON CONFLICT(run_id, "
                    "node) DO UPDATE SET updated_at=excluded.updated_at, status=excluded.status",
                    (run_id, self.node, self.clock(), json.dumps(snapshot)))
            except store.DatabaseUnavailable as exc:
                log.warning("NAS cluster: this node's counters could not be written: %s", exc.message)

    def release(self, snapshot: dict) -> None:
        """The run ended here: its final status stays in the row for every node to show."""
        if self._beating is not None:
            self._beating.set()
        with self._lock:
            try:
                self.conn().execute("UPDATE cluster_run SET running=0, heartbeat=?, status=? WHERE id=1 AND node=?",
                                    (self.clock(), json.dumps(snapshot), self.node))
            except store.DatabaseUnavailable as exc:
                log.warning("NAS cluster: the run's end could not be written: %s", exc.message)

    def set_run(self, run_id: int, full: bool, folder: str) -> None:
        """The run this node claimed has its id (`runs`): other nodes may take part now."""
        with self._lock:
            self.conn().execute("UPDATE cluster_run SET run_id=?, full_run=?, folder=? WHERE id=1 AND node=?",
                                (run_id, int(full), folder, self.node))
            self.conn().execute("DELETE FROM run_nodes WHERE run_id<?", (run_id,))  # earlier runs' counters
            self.run_id = run_id

    # -- any node ---------------------------------------------------------------
    @contextmanager
    def idle(self, busy_message: str, hint: str) -> Iterator[None]:
        """Run a block while no other node runs the cluster's run, and keep one from starting meanwhile
        (the row stays locked: a `claim` anywhere waits for the block). Busy (409) naming the run and its
        node otherwise; `DatabaseUnavailable` (503) when the database cannot tell."""
        with self._lock:
            conn = self.conn()
            with transaction(conn):
                row = conn.execute("SELECT node, running, heartbeat, run_id FROM cluster_run WHERE id=1"
                                   f"{dialect(conn).for_update}").fetchone()
                if row and row[1] and row[0] != self.node and self.clock() - row[2] < self.lease:
                    run = f"run {row[3]}" if row[3] is not None else "a run"
                    raise Busy(f"{busy_message}: indexing {run} is running on another Orthanc node ({row[0]})",
                               hint)
                yield

    def run_to_help(self) -> tuple[int, bool, str] | None:
        """`(run_id, full, folder)` of a run another node leads, alive and not asked to stop; else None."""
        with self._lock:
            row = self.conn().execute(
                "SELECT run_id, full_run, folder FROM cluster_run WHERE id=1 AND running=1 AND stop_requested=0 "
                "AND node<>? AND run_id IS NOT NULL AND heartbeat>?", (self.node, self.clock() - self.lease)
            ).fetchone()
        return (row[0], bool(row[1]), row[2]) if row else None

    def still_running(self, run_id: int) -> bool:
        """Whether run `run_id` goes on (its node alive, no stop asked)."""
        with self._lock:
            return self.conn().execute(
                "SELECT 1 FROM cluster_run WHERE id=1 AND running=1 AND stop_requested=0 AND run_id=? "
                "AND heartbeat>?", (run_id, self.clock() - self.lease)).fetchone() is not None

    def request_stop(self) -> bool:
        """Ask the run, wherever it runs, to stop at its next heartbeat. True if one was running."""
        with self._lock:
            row = self.conn().execute(
                "UPDATE cluster_run SET stop_requested=1 WHERE id=1 AND running=1 RETURNING node").fetchone()
        return row is not None

    def parts(self, run_id: int | None, but: str) -> list[dict]:
        """The counters the nodes other than `but` wrote for run `run_id`, each without the files of
        items it no longer holds (`settled`): a node killed mid-run, its items taken over by another. A node
        silent for `lease` seconds adds no speed (the run's files/s and ETA are those of the living)."""
        if run_id is None:
            return []
        with self._lock:
            conn = self.conn()
            parts = []
            for node, updated_at, status in conn.execute(
                    "SELECT node, updated_at, status FROM run_nodes WHERE run_id=? AND node<>?", (run_id, but)).fetchall():
                part = json.loads(status)
                if self.clock() - updated_at > self.lease:  # gone (killed): its last speed no longer counts
                    part["files_per_second"] = 0
                held = [counts for folder, recursive, counts in part.get("in_progress") or []
                        if conn.execute("SELECT 1 FROM work_items WHERE run_id=? AND folder=? AND recursive=? "
                                        "AND node=?", (run_id, folder, int(recursive), node)).fetchone()]
                parts.append(settled(part, held))
        return parts

    def current(self) -> tuple[str, bool, dict] | None:
        """`(node, alive, status)` of the cluster's latest run, or None before the first: the status its
        node wrote with every node's counters summed (`combined`). A run whose node stopped beating shows
        as `interrupted`."""
        with self._lock:
            row = self.conn().execute(
                "SELECT node, running, heartbeat, status, run_id FROM cluster_run WHERE id=1").fetchone()
        if row is None or not row[0]:
            return None
        node, running, beat, status, run_id = row
        data = combined(json.loads(status), self.parts(run_id, node))
        alive = bool(running) and self.clock() - beat < self.lease
        if running and not alive:
            data.update(phase="interrupted", running=False)
            data.setdefault("warnings", []).append(
                "The indexing run's node stopped answering (it was stopped or lost); start indexing again: "
                "files already indexed are not read again.")
        return node, alive, data
