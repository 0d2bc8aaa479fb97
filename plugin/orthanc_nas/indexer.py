"""The indexing pipeline: walk → skip unchanged → read heads (threads) → parse (processes) → write.

    listing threads ──chunks──▶ run thread: counts, skips unchanged files, hands
        the rest in batches ──▶ reading threads: each read waits for the throttle's
        pace and one of the governor's `limit` slots, then the batch is parsed by
        the parse pool ──outcomes──▶ run thread: writes them to the catalog.

One hand-off per boundary: the walk's queue (listing threads → run thread), the batch queue
(run thread → readers) and the outcome queue (readers → run thread). The run thread alone
changes the run's status: what the others find comes to it (walk errors in the listed chunks,
read errors in `Outcome`s, the live limit and warnings from the governor, which it publishes).

Nothing holds the whole file list: the walk's queue and the batch queue are bounded. Each written
batch is committed, so a run killed at any point resumes where it stopped (unchanged files are
skipped by size and mtime).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .catalog import Catalog
from .catalog_writer import CatalogWriter
from .errors import Busy, NasError, NasNetworkError
from .file_meta import NeedMore, NotDicom
from .governor import BLOCK, CALM, NAS_GONE_AFTER, RAISE_AFTER, Governor, Stopped, with_retries
from .headers import HEAD_SIZE, read_record
from .parsing import ParsePool
from .sources import FileEntry, Source, WalkError
from .sources.scope import WalkScope
from .status import IndexStatus
from .throttle import Pacer, Throttle

__all__ = ["BLOCK", "CALM", "RAISE_AFTER", "Governor", "Indexer", "NasGone", "Outcome", "with_retries"]

log = logging.getLogger("orthanc_nas")

READ_BATCH = 32  # files a reading thread takes at once (their heads are parsed together)
WRITE_BATCH = 256
WRITE_INTERVAL = 0.5
SERIES_COUNT_EVERY = 2.0  # seconds between two counts of the series while a run writes (PostgreSQL: a scan)
TICK = 0.1  # seconds: how often the run thread looks at the stop, the governor and the outcomes
CHECK_WITHIN = 25.0  # seconds: checking the NAS root at the start gives up by then (the spec allows 30)
FINISHING_WAIT = 10.0  # seconds a new start waits for a run whose status has ended to let go
TRIGGERS = ("api", "schedule", "start")


class NasGone(NasNetworkError):
    """The NAS itself stopped answering (not one file's trouble): the run stops as failed."""


@dataclass(slots=True)
class Outcome:
    """What reading one file gave: its record, or why not.

    `read`: the NAS gave the file (a record, or an error such as "not DICOM": it is written and not
    read again until it changes). False: it did not (network, access denied, gone meanwhile): a
    row the file had stays as it was, marked seen, and the next run tries again.
    """

    entry: FileEntry
    record: dict | None = None
    error: str | None = None
    read: bool = True


#: what to do when settings cannot change because a run goes on
IDLE_HINT = ("Stop indexing (Stop in the NAS panel, or DELETE /nas/index) or wait until it ends, "
             "then try again.")


class Indexer:
    """Runs indexing in the background (one run at a time) and keeps its status."""

    def __init__(self, catalog: Catalog, status: IndexStatus, source_factory: Callable[[], Source],
                 workers: Callable[[], int] | int, parse_processes: int | None = None,
                 gone_after: float = NAS_GONE_AFTER, throttle: Throttle | None = None,
                 excluded_folders: tuple[str, ...] = (), skipped_extensions: tuple[str, ...] = ()):
        self.catalog = catalog
        self.status = status
        self.source_factory = source_factory
        self._workers = workers if callable(workers) else (lambda: workers)
        self.parse_processes = parse_processes
        self.gone_after = gone_after
        self.throttle = throttle
        self.excluded_folders = tuple(excluded_folders)
        self.skipped_extensions = tuple(skipped_extensions)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.cluster = None  # several nodes on one database: the cluster's run (`cluster.ClusterRun`)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _busy(self) -> bool:
        """Whether a run is going on; called with the lock held."""
        if self.running and not self.status.running:
            # The status already says the run ended (a client may start the next one, or change the
            # connection) while its thread still closes the catalog: that takes moments, wait for it.
            self._thread.join(FINISHING_WAIT)
        return self.running

    def start(self, full: bool = False, folder: str = "", trigger: str = "api") -> None:
        """Start a run in the background: `folder` only (relative to the NAS root, "" for all); Busy if one runs."""
        with self._lock:
            if self._busy():
                raise Busy("indexing is already running")
            if self.cluster is not None:  # one run at a time for the whole cluster
                node = self.cluster.claim({"phase": "enumerating", "running": True})
                if node is not None:
                    raise Busy(f"indexing is already running on another Orthanc node ({node})",
                               "Wait for it to finish, or stop it with DELETE /nas/index on any node.")
                self.cluster.beat(self.status.snapshot, self._stop.set)
            self._stop.clear()
            self.status.start(self._workers())
            self._thread = threading.Thread(target=self.run, args=(full, folder, trigger), name="nas-indexer",
                                            daemon=True)
            self._thread.start()

    @contextmanager
    def idle(self, busy_message: str) -> Iterator[None]:
        """Run a block while no indexing runs, and keep one from starting meanwhile; Busy (409) otherwise.
        With several nodes, a run of the cluster on another node counts too (`ClusterRun.idle`)."""
        with self._lock:
            if self._busy():
                raise Busy(busy_message, IDLE_HINT)
            if self.cluster is None:
                yield
            else:
                with self.cluster.idle(busy_message, IDLE_HINT):
                    yield

    def stop(self) -> bool:
        """Ask a running indexing to stop at the next file boundary. True if one was running."""
        was_running = self.running
        self._stop.set()
        return was_running

    def wait(self, timeout: float | None = None) -> bool:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return not self.running

    def scope(self, folder: str = "") -> WalkScope:
        return WalkScope(folder, self.excluded_folders, self.skipped_extensions)

    def run(self, full: bool = False, folder: str = "", trigger: str = "api") -> dict:
        """One indexing run, in the calling thread. Returns the final status."""
        status = self.status
        if not status.running:  # called directly (command line, tests), not through start()
            self._stop.clear()
            status.start(self._workers())
        try:
            if self.cluster is not None:  # several nodes read this run (see `cluster_indexing`)
                from .cluster_indexing import ClusterRunPart

                ClusterRunPart(self, full, self.scope(folder), trigger, self.cluster).execute()
            else:
                _Run(self, full, self.scope(folder), trigger).execute()
        except NasError as exc:
            log.warning("NAS indexing failed: %s", exc.message)
            status.fail(exc.to_json())
        except Exception as exc:  # a bug: say so, keep Orthanc running
            log.exception("NAS indexing failed unexpectedly")
            status.fail({"error": f"{type(exc).__name__}: {exc}", "kind": "internal",
                         "hint": "See Orthanc's log; the index is unchanged and the next run resumes."})
        if self.cluster is not None:
            self.cluster.release(status.snapshot())
        return status.snapshot()


class _Run:
    """One run. `execute` drives it from the run thread, which alone changes the status."""

    def __init__(self, indexer: Indexer, full: bool, scope: WalkScope, trigger: str):
        self.ix = indexer
        self.full = full
        self.scope = scope
        self.trigger = trigger
        self.status = indexer.status
        self.cancel = indexer._stop  # DELETE /nas/index, Orthanc stopping
        self.stop = threading.Event()  # this run's walk and readers end: cancelled, or the NAS is gone
        self.pacer = Pacer(indexer.throttle)
        self.walk_errors = 0
        self.walk_done = False
        self.files_read = 0
        self.out = 0  # batches handed to the readers whose outcomes have not come back
        self.pending: list[Outcome] = []  # outcomes not written yet
        self.last_write = time.monotonic()
        self.counted_at = -SERIES_COUNT_EVERY  # the status's series count: the first write counts

    def execute(self) -> None:
        status = self.status
        source = self.ix.source_factory()
        writer = CatalogWriter(self.ix.catalog)
        writer.begin_run(self.trigger, self.scope.folder)
        try:
            status.update(series_count=writer.series_count())  # also when the NAS cannot be reached
            with_retries(source.check_root, stop=self.cancel, within=CHECK_WITHIN)
            outcome = self._pipeline(source, writer)
            status.update(series_count=writer.series_count())
            writer.finish_run(outcome, self._counts())
            status.set_phase(outcome)
        except BaseException:
            writer.finish_run("failed", self._counts())
            raise
        finally:
            writer.close()

    def _counts(self) -> dict:
        s = self.status.snapshot()
        return {"files_read": self.files_read, "files_skipped": s["files_skipped"],
                "files_removed": s["files_removed"], "errors": s["errors"]}

    # -- reading (worker threads) ------------------------------------------------
    def _reader(self, source: Source, parser: ParsePool, governor: Governor,
                batches: queue.Queue, outcomes: queue.SimpleQueue) -> None:
        """Take batches until None comes; each gives one list of outcomes (shorter once stopping)."""
        while (batch := batches.get()) is not None:
            try:
                found = self._read_batch(source, parser, governor, batch)
            except BaseException as exc:  # a bug: the run thread raises it
                found = exc
            outcomes.put(found)

    def _read_batch(self, source: Source, parser: ParsePool, governor: Governor,
                    batch: list[FileEntry]) -> list[Outcome]:
        found: list[Outcome] = []
        heads: list[tuple[FileEntry, bytes]] = []

        def read(path: str, size: int) -> bytes:
            with governor.slot(self.stop):  # at most `limit` reads in flight, whatever the number of threads
                started = time.monotonic()
                buf = with_retries(source.read_head, path, size, stop=self.stop, on_failure=governor.failure)
                governor.success(time.monotonic() - started)
                return buf

        for entry in batch:
            self.pacer.wait(self.stop)  # the throttle's pace, before a slot is taken
            if self.stop.is_set():
                break
            try:
                heads.append((entry, read(entry.path, HEAD_SIZE)))
            except NasError as exc:
                found.append(Outcome(entry, error=exc.message, read=False))
            except Stopped:
                break
        parsed = parser.parse([(buf, len(buf) < HEAD_SIZE) for _, buf in heads]) if heads else []
        for (entry, _), result in zip(heads, parsed, strict=True):
            if isinstance(result, NeedMore):  # a header longer than the first read: rare, read on here
                try:
                    result = read_record(read, entry.path, result.size)
                except NasError as exc:
                    found.append(Outcome(entry, error=exc.message, read=False))
                    continue
                except Stopped:
                    continue
                except NotDicom as exc:
                    result = str(exc)
            found.append(Outcome(entry, error=result) if isinstance(result, str) else Outcome(entry, result))
        return found

    # -- the run thread ----------------------------------------------------------
    def _pipeline(self, source: Source, writer: CatalogWriter) -> str:
        status = self.status
        mount_commands = getattr(source, "mount_commands", None)  # remote sources only
        governor = Governor(self.ix._workers(), self.ix.gone_after, mount_commands() if mount_commands else None,
                            (lambda: source.last_answer) if hasattr(source, "last_answer") else None)
        listing = self._listing(source)  # the listing starts while the parse processes do
        parser = ParsePool(self.ix.parse_processes)
        if parser.error:
            log.warning("NAS indexing parses in threads only: %s", parser.error)
        batches: queue.Queue = queue.Queue(maxsize=2 * governor.max)
        outcomes: queue.SimpleQueue = queue.SimpleQueue()
        readers = [threading.Thread(target=self._reader, args=(source, parser, governor, batches, outcomes),
                                    name=f"nas-read-{i}", daemon=True) for i in range(governor.max)]
        for t in readers:
            t.start()
        gone = False
        try:
            status.set_phase("indexing")
            for chunk in listing:  # [] now and then while nothing is listed: the loop still ticks
                if self._tick(governor, writer, outcomes, 0):
                    break
                for batch in self._dispatch(chunk, writer, governor):
                    while not self._hand_over(batches, batch):
                        if self._tick(governor, writer, outcomes, TICK):
                            break
                    if self.stop.is_set():
                        break
                if self.stop.is_set():
                    break
            else:
                self.walk_done = not self.stop.is_set()
            status.update(enumeration_done=True)
            while self.out and not self._tick(governor, writer, outcomes, TICK):
                pass
            gone = self.stop.is_set() and not self.cancel.is_set()
            self.stop.set()  # readers skip what is left
            while self.out:  # stopping: reads in progress finish, what they found is kept
                self._collect(outcomes, writer, TICK)
            if self.pending:
                self._write(writer)
        finally:
            self.stop.set()
            listing.close()
            for _ in readers:
                batches.put(None)
            for t in readers:
                t.join()
            parser.close()
        self._publish(governor)
        if self.cancel.is_set():
            return "cancelled"
        if gone:
            mount = f" If the network to the NAS is unreliable, mount the share instead — {mount_commands()}" \
                if mount_commands else ""
            raise NasGone(f"the NAS stopped answering during indexing (nothing for {self.ix.gone_after:g} s)",
                          "Check that the NAS is on and reachable, then start indexing again: what was "
                          f"indexed is kept and the next run goes on from there.{mount}")
        return self._finish(writer)

    def _listing(self, source: Source):
        """The walk's chunks (a cluster's run lists its work items instead, see `cluster_indexing`)."""
        return source.walk(self.stop, self.scope, chunks=True)

    def _tick(self, governor: Governor, writer: CatalogWriter, outcomes: queue.SimpleQueue, wait: float) -> bool:
        """Collect and write outcomes, publish the governor's state; True when the run must stop."""
        if self.cancel.is_set() or governor.gone():
            self.stop.set()  # the walk and the reading threads end at their next file
            return True
        self._collect(outcomes, writer, wait)
        self._publish(governor)
        return False

    def _publish(self, governor: Governor) -> None:
        self.status.update(workers=governor.limit, throttled=self.pacer.active())
        if governor.warning:
            self.status.warn(governor.warning)

    def _hand_over(self, batches: queue.Queue, batch: list[FileEntry]) -> bool:
        try:
            batches.put_nowait(batch)
        except queue.Full:
            return False
        self.out += 1
        return True

    def _collect(self, outcomes: queue.SimpleQueue, writer: CatalogWriter, wait: float) -> None:
        """Take the outcomes that came back (waiting up to `wait` s for the first); write when due."""
        while self.out:
            try:
                found = outcomes.get(timeout=wait) if wait else outcomes.get_nowait()
            except queue.Empty:
                break
            wait = 0
            self.out -= 1
            if isinstance(found, BaseException):
                raise found
            self.pending.extend(found)
        if self.pending and (len(self.pending) >= WRITE_BATCH or time.monotonic() - self.last_write > WRITE_INTERVAL):
            self._write(writer)

    def _dispatch(self, chunk: list, writer: CatalogWriter, governor: Governor) -> list[list[FileEntry]]:
        """Count what the walk found; skip unchanged files; return the others in reading batches."""
        entries: list[FileEntry] = []
        for item in chunk:
            if isinstance(item, WalkError):
                self.walk_errors += 1
                self._error(item.path, item.error.message)
                if isinstance(item.error, NasNetworkError):
                    governor.failure()
                else:
                    governor.alive()  # a refusal is an answer: the NAS is there
            else:
                entries.append(item)
        if not entries:
            return []
        governor.alive()  # listed files coming in: the NAS answers
        self.status.add_enumerated(len(entries))
        todo = entries
        if not self.full:
            known = writer.known([e.path for e in entries])
            unchanged = [e.path for e in entries if known.get(e.path) == (e.size, e.mtime_ns)]
            if unchanged:
                writer.mark_seen(unchanged)
                self.status.add_processed(len(unchanged), skipped=len(unchanged))
                seen = set(unchanged)
                todo = [e for e in entries if e.path not in seen]
        return [todo[i:i + READ_BATCH] for i in range(0, len(todo), READ_BATCH)]

    def _error(self, path: str, message: str) -> None:
        """Count a file (or folder) that could not be listed, read or indexed."""
        self.status.add_error(path, message)

    def _write(self, writer: CatalogWriter) -> None:
        """Store the pending outcomes in one transaction (see `Outcome.read`)."""
        found, self.pending = self.pending, []
        refused = writer.write([(o.entry, o.record, o.error) for o in found if o.read],
                               unread=[o.entry.path for o in found if not o.read])
        for o in found:
            if o.error is not None:
                self._error(o.entry.path, o.error)
        for path, error in refused:  # a record the index refused: counted, the rest of the batch is written
            self._error(path, error)
        self.files_read += sum(o.read for o in found)
        if time.monotonic() - self.counted_at >= SERIES_COUNT_EVERY:
            self.status.update(series_count=writer.series_count())
            self.counted_at = time.monotonic()
        self.status.add_processed(len(found))
        self.last_write = time.monotonic()

    def _finish(self, writer: CatalogWriter) -> str:
        """Remove files gone from the NAS, only when that is safe, and only those the walk covered."""
        status = self.status
        if not self.walk_done or self.walk_errors:
            status.warn("Some folders of the NAS could not be listed: files no longer found there were kept "
                        "in the index. They are removed after a run that lists the whole NAS without errors.")
        elif status.enumerated_files == 0 and writer.conn.execute("SELECT 1 FROM files LIMIT 1").fetchone():
            status.warn("The NAS folder is empty although the index holds files: is the share unmounted? "
                        "The index was kept as it was.")
        else:
            status.update(files_removed=writer.remove_unseen(self.scope.folder, self.scope.covers))
        return "done"
