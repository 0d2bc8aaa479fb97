"""The indexing pipeline: walk → skip unchanged → read heads (threads) → parse (processes) → write.

    walk thread ──chunks──▶ bounded queue ──▶ run thread: skip unchanged files,
        hand the rest in small batches to `Workers` reading threads, which
        read each file's head and have it parsed by the parse pool; the run
        thread writes finished batches to the catalog and keeps the status.

Nothing holds the whole file list: the walk feeds a bounded queue and at most
`live workers × 2` batches are in flight. Each written batch is committed, so
a run killed at any point resumes where it stopped (unchanged files are
skipped by size and mtime).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager

from .catalog import Catalog, CatalogWriter
from .errors import Busy, NasError, NasNetworkError
from .headers import HEAD_SIZE, NeedMore, NotDicom, read_record
from .parsing import ParsePool
from .sources import FileEntry, Source, WalkError
from .status import IndexStatus

log = logging.getLogger("orthanc_nas")

ENUM_CHUNK = 256
ENUM_QUEUE_CHUNKS = 16
READ_BATCH = 32
WRITE_BATCH = 256
WRITE_INTERVAL = 0.5
RETRIES = 3
BACKOFF = 0.5  # seconds before the first retry; doubled each time
NAS_GONE_AFTER = 60.0  # seconds without any successful read while reads keep failing on the network
SLOW_READ_SECONDS = 0.05  # mean head read time above which a local mount is suggested
FINISHING_WAIT = 10.0  # seconds a new start waits for a run whose status has ended to let go


class NasGone(NasNetworkError):
    """The NAS itself stopped answering (not one file's trouble): the run stops as failed."""


class Governor:
    """Watches read times and network failures: sets the live worker count, detects a NAS gone."""

    def __init__(self, workers: int, status: IndexStatus, gone_after: float = NAS_GONE_AFTER):
        self.max = workers
        self.limit = workers
        self.status = status
        self.gone_after = gone_after
        self._lock = threading.Lock()
        self.last_success = time.monotonic()
        self.failures_since_success = 0
        self.baseline: float | None = None
        self.recent = 0.0  # moving average of read seconds
        self.reads = 0
        self.good_streak = 0

    def success(self, seconds: float) -> None:
        with self._lock:
            self.last_success = time.monotonic()
            self.failures_since_success = 0
            self.reads += 1
            self.recent = seconds if self.reads == 1 else self.recent * 0.95 + seconds * 0.05
            if self.reads == 50 or (self.baseline is not None and self.recent < self.baseline):
                self.baseline = self.recent
            if self.baseline is not None and self.recent > 4 * self.baseline + 0.02 and self.limit > 1:
                self._set(max(1, self.limit * 3 // 4))  # the NAS is struggling: ask less of it
                self.good_streak = 0
            elif self.limit < self.max:
                self.good_streak += 1
                if self.good_streak >= 100:
                    self._set(self.limit + 1)
                    self.good_streak = 0
            if self.reads % 200 == 0 and self.recent > SLOW_READ_SECONDS:
                self.status.warn(
                    f"The NAS answers slowly ({self.recent * 1000:.0f} ms per file header): mounting the share "
                    "on this server and indexing the mounted folder would be faster.")

    def failure(self) -> None:
        """A read failed on the network even after its retries."""
        with self._lock:
            self.failures_since_success += 1
            if self.limit > 1:
                self._set(max(1, self.limit // 2))
            self.good_streak = 0

    def gone(self) -> bool:
        with self._lock:
            return self.failures_since_success > 0 and time.monotonic() - self.last_success > self.gone_after

    def _set(self, limit: int) -> None:
        self.limit = limit
        self.status.workers = limit


def with_retries(fn: Callable, *args, stop: threading.Event, retries: int = RETRIES, backoff: float = BACKOFF):
    """Call `fn`, retrying network failures with exponential backoff."""
    for attempt in range(retries + 1):
        try:
            return fn(*args)
        except NasNetworkError:
            if attempt == retries or stop.wait(backoff * 2 ** attempt):
                raise
    raise AssertionError("unreachable")


class Indexer:
    """Runs indexing in the background (one run at a time) and keeps its status."""

    def __init__(self, catalog: Catalog, status: IndexStatus, source_factory: Callable[[], Source],
                 workers: Callable[[], int] | int, parse_processes: int | None = None,
                 gone_after: float = NAS_GONE_AFTER):
        self.catalog = catalog
        self.status = status
        self.source_factory = source_factory
        self._workers = workers if callable(workers) else (lambda: workers)
        self.parse_processes = parse_processes
        self.gone_after = gone_after
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

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

    def start(self, full: bool = False) -> None:
        with self._lock:
            if self._busy():
                raise Busy("indexing is already running")
            self._stop.clear()
            self.status.start(self._workers())
            self._thread = threading.Thread(target=self.run, args=(full,), name="nas-indexer", daemon=True)
            self._thread.start()

    @contextmanager
    def idle(self, busy_message: str) -> Iterator[None]:
        """Run a block while no indexing runs, and keep one from starting meanwhile; Busy (409) otherwise."""
        with self._lock:
            if self._busy():
                raise Busy(busy_message, "Stop indexing (Stop in the NAS panel, or DELETE /nas/index) or wait "
                                         "until it ends, then try again.")
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

    def run(self, full: bool = False) -> dict:
        """One indexing run, in the calling thread. Returns the final status."""
        status = self.status
        if not status.running:  # called directly (command line, tests), not through start()
            self._stop.clear()
            status.start(self._workers())
        try:
            _Run(self, full).execute()
        except NasError as exc:
            log.warning("NAS indexing failed: %s", exc.message)
            status.fail(exc.to_json())
        except Exception as exc:  # a bug: say so, keep Orthanc running
            log.exception("NAS indexing failed unexpectedly")
            status.fail({"error": f"{type(exc).__name__}: {exc}", "kind": "internal",
                         "hint": "See Orthanc's log; the index is unchanged and the next run resumes."})
        return status.snapshot()


class _Run:
    """The state of one run; `execute` drives it from the run thread."""

    def __init__(self, indexer: Indexer, full: bool):
        self.ix = indexer
        self.full = full
        self.status = indexer.status
        self.stop = indexer._stop
        self.walk_errors = 0
        self.walk_failure: BaseException | None = None
        self.walk_done = False

    def execute(self) -> None:
        status = self.status
        source = self.ix.source_factory()
        writer = CatalogWriter(self.ix.catalog)
        writer.begin_run()
        try:
            with_retries(source.check_root, stop=self.stop)
            status.series_count = writer.series_count()
            outcome = self._pipeline(source, writer)
            writer.finish_run(outcome)
            status.series_count = writer.series_count()
            status.set_phase(outcome)
        except BaseException:
            writer.finish_run("failed")
            raise
        finally:
            writer.close()

    # -- enumeration (its own thread) --------------------------------------------
    def _walk(self, source: Source, out: queue.Queue, governor: Governor) -> None:
        chunk: list[FileEntry] = []
        try:
            for item in source.walk(self.stop):
                if isinstance(item, WalkError):
                    self.walk_errors += 1
                    self.status.add_error(item.path, item.error.message)
                    if isinstance(item.error, NasNetworkError):
                        governor.failure()
                    continue
                chunk.append(item)
                if len(chunk) >= ENUM_CHUNK:
                    self._put(out, chunk)
                    self.status.add_enumerated(len(chunk))
                    chunk = []
            if chunk:
                self._put(out, chunk)
                self.status.add_enumerated(len(chunk))
            self.walk_done = not self.stop.is_set()
        except BaseException as exc:
            self.walk_failure = exc
        finally:
            self.status.enumeration_done = True
            self._put(out, None)

    def _put(self, out: queue.Queue, item) -> None:
        while True:
            try:
                out.put(item, timeout=0.2)
                return
            except queue.Full:
                if self.stop.is_set() and item is not None:
                    return

    # -- reading (worker threads) ------------------------------------------------
    def _read_batch(self, source: Source, parser: ParsePool, batch: list[FileEntry], governor: Governor) -> list:
        results: list[tuple] = []
        heads: list[tuple[FileEntry, bytes]] = []
        for entry in batch:
            if self.stop.is_set():
                break
            started = time.monotonic()
            try:
                buf = with_retries(source.read_head, entry.path, HEAD_SIZE, stop=self.stop)
            except NasError as exc:
                if isinstance(exc, NasNetworkError):
                    governor.failure()
                results.append((entry, None, exc.message))
                continue
            governor.success(time.monotonic() - started)
            heads.append((entry, buf))
        parsed = parser.parse([(buf, len(buf) < HEAD_SIZE) for _, buf in heads]) if heads else []
        for (entry, _), outcome in zip(heads, parsed, strict=True):
            if isinstance(outcome, NeedMore):  # a header longer than the first read: rare, read on here
                try:
                    outcome = read_record(lambda p, n: with_retries(source.read_head, p, n, stop=self.stop),
                                          entry.path, outcome.size)
                except (NasError, NotDicom) as exc:
                    outcome = getattr(exc, "message", None) or str(exc)
            if isinstance(outcome, str):
                results.append((entry, None, outcome))
            else:
                results.append((entry, outcome, None))
        return results

    # -- the run thread ----------------------------------------------------------
    def _pipeline(self, source: Source, writer: CatalogWriter) -> str:
        status = self.status
        workers = self.ix._workers()
        governor = Governor(workers, status, self.ix.gone_after)
        entries: queue.Queue = queue.Queue(maxsize=ENUM_QUEUE_CHUNKS)
        walker = threading.Thread(target=self._walk, args=(source, entries, governor), name="nas-walk", daemon=True)
        walker.start()  # the walk fills its queue while the parse processes start (about half a second)
        parser = ParsePool(self.ix.parse_processes)
        if parser.error:
            log.warning("NAS indexing parses in threads only: %s", parser.error)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="nas-read")
        inflight: set[Future] = set()
        pending: list[tuple] = []
        last_write = time.monotonic()
        entries_open = True
        try:
            status.set_phase("indexing")
            while True:
                if self.stop.is_set():
                    break
                if governor.gone():
                    self.stop.set()  # the walk and the reading threads end at their next file
                    raise NasGone("the NAS stopped answering during indexing",
                                  "Check the NAS and the network, then start indexing again: "
                                  "what was indexed is kept and the next run resumes.")
                while entries_open and len(inflight) < governor.limit * 2:
                    try:
                        chunk = entries.get(timeout=0.05 if inflight else 0.2)
                    except queue.Empty:
                        break
                    if chunk is None:
                        entries_open = False
                        break
                    for batch in self._dispatch(chunk, writer):
                        inflight.add(pool.submit(self._read_batch, source, parser, batch, governor))
                if not entries_open and not inflight:
                    break
                done, inflight = wait(inflight, timeout=0.1, return_when=FIRST_COMPLETED) if inflight \
                    else (set(), inflight)
                for future in done:
                    pending.extend(future.result())
                if pending and (len(pending) >= WRITE_BATCH or time.monotonic() - last_write > WRITE_INTERVAL):
                    self._write(writer, pending)
                    pending = []
                    last_write = time.monotonic()
            for future in inflight:  # stopping: let reads in progress finish, keep what they found
                pending.extend(future.result())
            if pending:
                self._write(writer, pending)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            parser.close()
            walker.join(timeout=30)
        if self.ix._stop.is_set():
            return "cancelled"
        if self.walk_failure is not None:
            raise self.walk_failure
        return self._finish(writer)

    def _dispatch(self, chunk: list[FileEntry], writer: CatalogWriter) -> list[list[FileEntry]]:
        """Skip unchanged files; return the others in reading batches."""
        todo = chunk
        if not self.full:
            known = writer.known([e.path for e in chunk])
            unchanged = [e.path for e in chunk if known.get(e.path) == (e.size, e.mtime_ns)]
            if unchanged:
                writer.mark_seen(unchanged)
                self.status.add_processed(len(unchanged), skipped=len(unchanged))
                seen = set(unchanged)
                todo = [e for e in chunk if e.path not in seen]
        return [todo[i:i + READ_BATCH] for i in range(0, len(todo), READ_BATCH)]

    def _write(self, writer: CatalogWriter, results: list[tuple]) -> None:
        writer.write(results)
        for entry, _, error in results:
            if error is not None:
                self.status.add_error(entry.path, error)
        self.status.series_count = writer.series_count()
        self.status.add_processed(len(results))

    def _finish(self, writer: CatalogWriter) -> str:
        """Remove files gone from the NAS, only when that is safe."""
        status = self.status
        if not self.walk_done or self.walk_errors:
            status.warn("Some folders of the NAS could not be listed: files no longer found there were kept "
                        "in the index. They are removed after a run that lists the whole NAS without errors.")
        elif status.enumerated_files == 0 and writer.conn.execute("SELECT 1 FROM files LIMIT 1").fetchone():
            status.warn("The NAS folder is empty although the index holds files: is the share unmounted? "
                        "The index was kept as it was.")
        else:
            status.files_removed = writer.remove_unseen()
        return "done"
