"""Live progress of indexing: the status object of the spec, kept in memory and in `index_status.json`.

The indexer updates one `IndexStatus`; `GET /nas/status` answers from memory
(no file I/O, so it answers in well under 500 ms while indexing runs). The
file is rewritten atomically (temporary file + `os.replace`) at each phase
change and at least every `WRITE_EVERY` processed files, so a reader (or the
next start after a crash) never sees a half-written file.

During a run, one thread changes the counters: the run's own (see `indexer`), which the walk and
the reading threads send what they found. Every change goes through a method here, under the
lock `snapshot()` takes; the file is written after that lock is released.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import deque
from datetime import UTC, datetime

from .pathnames import escaped

STATUS_NAME = "index_status.json"
WRITE_EVERY = 50
MAX_ERROR_SAMPLES = 20
RATE_WINDOW = 10.0  # seconds over which files_per_second is measured

PHASES = ("idle", "enumerating", "indexing", "done", "cancelled", "failed", "interrupted")
RUNNING_PHASES = ("enumerating", "indexing")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomic(path: str, data: dict) -> None:
    """Write `data` to `path` through a temporary file and a rename; the file is 0600 (patient names) whatever
    the umask, and the temporary one is created so (O_EXCL), never widened later. No temporary file is
    left on error; a file name that is not UTF-8 and slipped through unescaped is written escaped."""
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a crash: O_EXCL must create it anew with this mode
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w", encoding="utf-8",
                       errors="backslashreplace") as fh:
            os.fchmod(fh.fileno(), 0o600)
            json.dump(data, fh, ensure_ascii=False, indent=1)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class IndexStatus:
    """Counters of the current (or last) run; thread-safe."""

    def __init__(self, data_dir: str | None):
        self.path = os.path.join(data_dir, STATUS_NAME) if data_dir else None
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()  # one writer of the file at a time, outside `_lock`
        self.next_run_at: float | None = None  # from Schedule: kept across runs
        self._written_at_processed = 0
        self._rate: deque[tuple[float, int]] = deque()
        self._reset()
        self.phase = "idle"

    def _reset(self) -> None:
        self.phase = "idle"
        self.enumerated_files = 0
        self.enumeration_done = False
        self.files_processed = 0
        self.files_skipped = 0
        self.files_removed = 0
        self.series_count = 0
        self.errors = 0
        self.error_samples: list[dict] = []
        self.workers = 0
        self.throttled = False
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.updated_at: float | None = None
        self.warnings: list[str] = []
        self.failure: dict | None = None
        self._rate.clear()
        self._written_at_processed = 0

    # -- lifecycle --------------------------------------------------------------
    def load(self, series_count: int = 0) -> None:
        """Read the file left by the previous process; a run it left `running` is now `interrupted`."""
        saved = None
        if self.path and os.path.exists(self.path):
            try:
                with open(self.path, encoding="utf-8") as fh:
                    saved = json.load(fh)
            except (OSError, ValueError):
                saved = None
        interrupted = False
        with self._lock:
            self._reset()
            self.series_count = series_count
            if not isinstance(saved, dict):
                return
            for key in ("enumerated_files", "files_processed", "files_skipped", "files_removed", "errors"):
                if isinstance(saved.get(key), int):
                    setattr(self, key, saved[key])
            self.enumeration_done = saved.get("enumeration_done") is True
            if isinstance(saved.get("failure"), dict):  # why the last run failed, also after a restart
                self.failure = saved["failure"]
            self.error_samples = list(saved.get("error_samples") or [])[:MAX_ERROR_SAMPLES]
            self.warnings = list(saved.get("warnings") or [])
            self.phase = saved.get("phase") if saved.get("phase") in PHASES else "idle"
            self.started_at = _parse_iso(saved.get("started_at"))
            self.finished_at = _parse_iso(saved.get("finished_at"))
            self.updated_at = _parse_iso(saved.get("updated_at"))
            if saved.get("running") or self.phase in RUNNING_PHASES:
                interrupted = True
                self.phase = "interrupted"
                self.finished_at = self.updated_at
                self.warnings.append("The previous indexing run was interrupted (Orthanc stopped during it). "
                                     "Start indexing again: files already indexed are not read again.")
        if interrupted:
            self.write()

    def start(self, workers: int) -> None:
        with self._lock:
            self._reset()
            self.phase = "enumerating"
            self.workers = workers
            self.started_at = time.time()
        self.write()

    def set_phase(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
            if phase not in RUNNING_PHASES:
                self.finished_at = time.time()
                self.throttled = False
        self.write()

    def fail(self, error: dict) -> None:
        with self._lock:
            self.failure = error
        self.set_phase("failed")

    # -- counters ---------------------------------------------------------------
    def update(self, **fields) -> None:
        """Set plain fields (`workers`, `throttled`, `series_count`, `files_removed`, `enumeration_done`,
        `next_run_at`) under the lock."""
        with self._lock:
            for name, value in fields.items():
                if not hasattr(self, name) or name.startswith("_"):
                    raise AttributeError(name)
                setattr(self, name, value)

    def add_enumerated(self, n: int) -> None:
        with self._lock:
            self.enumerated_files += n

    def add_processed(self, n: int, *, skipped: int = 0) -> None:
        with self._lock:
            self.files_processed += n
            self.files_skipped += skipped
            now = time.time()
            self._rate.append((now, self.files_processed))
            while len(self._rate) > 2 and now - self._rate[0][0] > RATE_WINDOW:
                self._rate.popleft()
            due = self.files_processed - self._written_at_processed >= WRITE_EVERY
        if due:
            self.write()

    def add_error(self, path: str, message: str) -> None:
        with self._lock:
            self.errors += 1
            if len(self.error_samples) < MAX_ERROR_SAMPLES:
                self.error_samples.append({"path": escaped(path), "error": escaped(message)})

    def warn(self, sentence: str) -> None:
        with self._lock:
            if sentence not in self.warnings:
                self.warnings.append(sentence)

    # -- reading ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.phase in RUNNING_PHASES

    def files_per_second(self) -> float:
        with self._lock:
            if not self.running:  # a finished run: its average speed
                if not (self.started_at and self.finished_at and self.finished_at > self.started_at):
                    return 0.0
                return round(self.files_processed / (self.finished_at - self.started_at), 1)
            if len(self._rate) < 2:
                return 0.0
            (t0, n0), (t1, n1) = self._rate[0], self._rate[-1]
            return round((n1 - n0) / (t1 - t0), 1) if t1 > t0 else 0.0

    def snapshot(self) -> dict:
        with self._lock:
            rate = self.files_per_second()
            eta = None
            if self.running and rate > 0:
                eta = round(max(self.enumerated_files - self.files_processed, 0) / rate, 1)
            data = {
                "running": self.running,
                "phase": self.phase,
                "enumerated_files": self.enumerated_files,
                "enumeration_done": self.enumeration_done,
                "files_processed": self.files_processed,
                "files_skipped": self.files_skipped,
                "files_removed": self.files_removed,
                "series_count": self.series_count,
                "errors": self.errors,
                "error_samples": list(self.error_samples),
                "workers": self.workers,
                "throttled": self.throttled,
                "next_run_at": iso(self.next_run_at),
                "files_per_second": rate,
                "eta_seconds": eta,
                "started_at": iso(self.started_at),
                "updated_at": iso(self.updated_at),
                "finished_at": iso(self.finished_at) if not self.running else None,
                "warnings": list(self.warnings),
            }
            if self.failure:
                data["failure"] = self.failure
            return data

    def write(self) -> None:
        """Rewrite index_status.json atomically (no-op without a data directory); call without holding the lock."""
        with self._write_lock:  # writes in the order of their snapshots
            with self._lock:
                self.updated_at = time.time()
                self._written_at_processed = self.files_processed
                data = self.snapshot()
            if self.path:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
                write_json_atomic(self.path, data)


def _parse_iso(value) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None
