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
CHECK_WITHIN = 25.0  # seconds: checking the NAS root at the start gives up by then (the spec allows 30)
NAS_GONE_AFTER = 60.0  # seconds without any answer from the NAS while its requests keep failing on the network
BLOCK = 20  # reads are judged by blocks: the fastest read of each block
SLOWDOWN = 4.0  # blocks whose fastest read is this many times the baseline (plus SLOW_MARGIN) are slow
SLOW_MARGIN = 0.02  # seconds: below this, a read is never slow (loopback or LAN jitter)
CALM = 1.0  # seconds after a change of the worker count before reads are judged again
RAISE_AFTER = 3  # blocks in a row that are not slow before one more worker is added
SLOW_READ_SECONDS = 0.05  # when even the fastest reads take longer, a local mount is suggested
FINISHING_WAIT = 10.0  # seconds a new start waits for a run whose status has ended to let go


class NasGone(NasNetworkError):
    """The NAS itself stopped answering (not one file's trouble): the run stops as failed."""


class Governor:
    """Sets the live worker count from read times and network failures; tells when the NAS is gone.

    Reads are judged by blocks of `BLOCK`, by the fastest read of each block: a client busy
    parsing (two cores, a GIL) makes some reads wait, but not all of them, while a NAS or a
    network that is slow makes every read slow. The baseline is the fastest block of the run.
    A slow block means the NAS may be struggling under our requests: the count goes down to 3/4;
    failed requests halve it. After a change, reads are not judged for `CALM` seconds, so the new
    count shows its effect first. If a lower count did not make reads faster, they are slow for
    another reason (a longer network path, a NAS busy with others): that time becomes the new
    baseline, since fewer workers would only lose throughput. `RAISE_AFTER` blocks in a row that
    are not slow add a worker back, up to `Workers`.

    The NAS is gone when its requests keep failing on the network and nothing succeeded for
    `gone_after` seconds: no read, and no other answer -- `last_answer()` for a source that knows
    when the NAS last answered, else `alive()`, called as listed files come in.
    """

    def __init__(self, workers: int, status: IndexStatus, gone_after: float = NAS_GONE_AFTER,
                 slow_hint: str | None = None, last_answer: Callable[[], float] | None = None):
        self.max = workers
        self.last_answer = last_answer
        self.limit = workers
        self.status = status
        self.gone_after = gone_after
        self.slow_hint = slow_hint  # set for a remote source: how to mount it locally instead
        self._lock = threading.Lock()
        self.last_success = time.monotonic()
        self.failures_since_success = 0
        self.reads = 0
        self.block_fastest = float("inf")
        self.fastest: float | None = None  # the fastest read of the last block
        self.baseline: float | None = None
        self.good_blocks = 0
        self.calm_until = 0.0
        self.cut_from: float | None = None  # the fastest read when the count was last lowered for slowness
        self.warned = False

    def alive(self) -> None:
        """The NAS answered (listed files came in); says nothing about read times.

        Nothing for a source that tells when the NAS last answered (`last_answer`): listed files may
        have waited in the walk's queue, so their arrival says less than the source does.
        """
        if self.last_answer is not None:
            return
        self.last_success = time.monotonic()
        self.failures_since_success = 0

    def success(self, seconds: float) -> None:
        """A head read took `seconds`."""
        with self._lock:
            now = time.monotonic()
            self.last_success = now
            self.failures_since_success = 0
            self.reads += 1
            self.block_fastest = min(self.block_fastest, seconds)
            if self.reads % BLOCK:
                return
            fastest, self.block_fastest = self.block_fastest, float("inf")
            self.fastest = fastest
            if self.baseline is None or fastest < self.baseline:
                self.baseline = fastest
            self._warn_if_slow(fastest)
            if now < self.calm_until:
                return
            if fastest > SLOWDOWN * self.baseline + SLOW_MARGIN:
                self.good_blocks = 0
                if self.cut_from is not None and fastest > 0.8 * self.cut_from:
                    self.baseline, self.cut_from = fastest, None  # fewer workers did not help
                elif self.limit > 1:
                    self.cut_from = fastest
                    self._set(max(1, self.limit * 3 // 4), now)
            else:
                self.cut_from = None
                if self.limit < self.max:
                    self.good_blocks += 1
                    if self.good_blocks >= RAISE_AFTER:
                        self._set(self.limit + 1, now)

    def failure(self) -> None:
        """A request to the NAS failed on the network (time-out, refused, dropped)."""
        with self._lock:
            now = time.monotonic()
            self.failures_since_success += 1
            self.good_blocks = 0
            self.cut_from = None
            if self.limit > 1 and now >= self.calm_until:
                self._set(max(1, self.limit // 2), now)

    def gone(self) -> bool:
        with self._lock:
            last = max(self.last_success, self.last_answer()) if self.last_answer else self.last_success
            return self.failures_since_success > 0 and time.monotonic() - last > self.gone_after

    def _set(self, limit: int, now: float) -> None:
        self.limit = limit
        self.good_blocks = 0
        self.calm_until = now + CALM
        self.status.workers = limit

    def _warn_if_slow(self, fastest: float) -> None:
        if self.slow_hint is None or self.warned or fastest <= SLOW_READ_SECONDS:
            return
        self.warned = True
        self.status.warn(
            f"The NAS answers slowly: even the fastest file headers take {fastest * 1000:.0f} ms to read over "
            f"SMB (a few ms on a local network). Indexing the share mounted on this server would be "
            f"faster — {self.slow_hint}")


def with_retries(fn: Callable, *args, stop: threading.Event, retries: int = RETRIES, backoff: float = BACKOFF,
                 on_failure: Callable[[], None] | None = None, within: float | None = None):
    """Call `fn`, retrying network failures up to `retries` times with exponential backoff.

    `on_failure` is told of every failed attempt. With `within` (seconds), no retry starts that
    would, at the pace of the last attempt, end later than that after the first attempt began.
    """
    first = time.monotonic()
    for attempt in range(retries + 1):
        began = time.monotonic()
        try:
            return fn(*args)
        except NasNetworkError:
            if on_failure is not None:
                on_failure()
            pause = backoff * 2 ** attempt
            now = time.monotonic()
            late = within is not None and (now - first) + pause + (now - began) > within
            if attempt == retries or late or stop.wait(pause):
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
        self.cancel = indexer._stop  # DELETE /nas/index, Orthanc stopping
        self.stop = threading.Event()  # this run's walk and readers end: cancelled, or the NAS is gone
        self.walk_errors = 0
        self.walk_failure: BaseException | None = None
        self.walk_done = False

    def execute(self) -> None:
        status = self.status
        source = self.ix.source_factory()
        writer = CatalogWriter(self.ix.catalog)
        writer.begin_run()
        try:
            with_retries(source.check_root, stop=self.cancel, within=CHECK_WITHIN)
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
                    else:
                        governor.alive()  # a refusal is an answer: the NAS is there
                    continue
                governor.alive()  # listed files coming in: the NAS answers
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
        """Read and parse a batch: `(entry, record, error, kept)` each; see `_write` for `kept`."""
        results: list[tuple] = []
        heads: list[tuple[FileEntry, bytes]] = []

        def read(path: str, size: int) -> bytes:
            return with_retries(source.read_head, path, size, stop=self.stop, on_failure=governor.failure)

        for entry in batch:
            if self.stop.is_set():
                break
            started = time.monotonic()
            try:
                buf = read(entry.path, HEAD_SIZE)
            except NasError as exc:
                results.append((entry, None, exc.message, False))
                continue
            governor.success(time.monotonic() - started)
            heads.append((entry, buf))
        parsed = parser.parse([(buf, len(buf) < HEAD_SIZE) for _, buf in heads]) if heads else []
        for (entry, _), outcome in zip(heads, parsed, strict=True):
            if isinstance(outcome, NeedMore):  # a header longer than the first read: rare, read on here
                try:
                    outcome = read_record(read, entry.path, outcome.size)
                except NasError as exc:
                    results.append((entry, None, exc.message, False))
                    continue
                except NotDicom as exc:
                    outcome = str(exc)
            if isinstance(outcome, str):
                results.append((entry, None, outcome, True))
            else:
                results.append((entry, outcome, None, True))
        return results

    # -- the run thread ----------------------------------------------------------
    def _pipeline(self, source: Source, writer: CatalogWriter) -> str:
        status = self.status
        workers = self.ix._workers()
        mount_commands = getattr(source, "mount_commands", None)  # remote sources only
        governor = Governor(workers, status, self.ix.gone_after, mount_commands() if mount_commands else None,
                            (lambda: source.last_answer) if hasattr(source, "last_answer") else None)
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
        gone = False
        try:
            status.set_phase("indexing")
            while True:
                if self.cancel.is_set() or governor.gone():
                    gone = not self.cancel.is_set()
                    self.stop.set()  # the walk and the reading threads end at their next file
                    break
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
        if self.cancel.is_set():
            return "cancelled"
        if gone:
            mount = f" If the network to the NAS is unreliable, mount the share instead — {mount_commands()}" \
                if mount_commands else ""
            raise NasGone(f"the NAS stopped answering during indexing (nothing for {self.ix.gone_after:g} s)",
                          "Check that the NAS is on and reachable, then start indexing again: what was "
                          f"indexed is kept and the next run goes on from there.{mount}")
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
        """Store a batch of outcomes in one transaction.

        A file that was read (`kept`) is written, with its error if it is not DICOM: it is not read
        again until it changes. A file the NAS did not give (network trouble, access denied, gone
        meanwhile) is not written: a row it had stays as it was (its series keep it), it is marked
        seen so it is not taken for deleted, and the next run tries it again.
        """
        refused = writer.write([(entry, record, error) for entry, record, error, kept in results if kept],
                               unread=[entry.path for entry, _, _, kept in results if not kept])
        for entry, _, error, _ in results:
            if error is not None:
                self.status.add_error(entry.path, error)
        for path, error in refused:  # a record the index refused: counted, the rest of the batch is written
            self.status.add_error(path, error)
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
