"""Header parsing on every core.

Parsing a header is pure Python and CPU-bound: threads share one GIL (inside
Orthanc they also compete with the REST callbacks for it), so reading threads
hand their bytes to a small pool of worker processes. Inside Orthanc,
`sys.executable` is the Orthanc binary, not Python: the pool is told which
interpreter to start (the one Orthanc embeds) and never runs the plugin
script in the children.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import sys
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .file_meta import NeedMore, NotDicom
from .headers import parse_head

log = logging.getLogger("orthanc_nas")
#: the outcome of a head whose parsing ended its worker process twice (killed, out of memory, a crash)
PROCESS_ENDED = "the process parsing this header ended abruptly (out of memory, killed or crashed)"


def parse_many(items: list[tuple[bytes, bool]]) -> list:
    """Parse many heads at once (one round trip to a worker process per batch).

    Each result is a record dict, a `NeedMore`, or the reason (str) the file is not usable.
    """
    results: list = []
    warnings.simplefilter("ignore")  # pydicom warns about each odd file; the outcome says enough
    for buf, complete in items:
        try:
            results.append(parse_head(buf, complete))
        except NotDicom as exc:
            results.append(str(exc))
        except Exception as exc:  # one file must not fail its batch, whatever it holds
            results.append(f"the header could not be read ({type(exc).__name__}: {exc})"[:300])
    return results


@functools.cache  # looked up once: every SMB client process is started with it
def python_interpreter() -> str | None:
    """The Python interpreter to start worker processes with, or None if there is none."""
    exe = sys.executable or ""
    if os.path.basename(exe).lower().startswith("python"):
        return exe
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for folder in (os.path.join(sys.base_exec_prefix, "bin"), sys.base_exec_prefix, "/usr/bin"):
        for name in (f"python{version}", "python3", "python.exe"):
            candidate = os.path.join(folder, name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    return None


def default_processes() -> int:
    cores = os.cpu_count() or 1
    return 0 if cores < 2 else min(cores, 8)


class ParsePool:
    """Parses batches of heads in worker processes, or in the calling thread if there are none.

    A worker process that ends abruptly (the kernel's out-of-memory killer, a signal, a crash in a
    library) breaks the whole `ProcessPoolExecutor`: the pool is then started again, and the batches it
    held are parsed again head by head, so that only a head that ends its worker a second time is lost —
    as an error of that file (`PROCESS_ENDED`), never of the run. Called from many reading threads.
    """

    def __init__(self, processes: int | None = None):
        self.processes = default_processes() if processes is None else processes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.restarts = 0
        self.error: str | None = None
        if self.processes > 0:
            try:
                self._pool = self._start()
            except Exception as exc:  # no usable interpreter, no /dev/shm...: parse in threads instead
                self.error = f"{type(exc).__name__}: {exc}"
                self.processes = 0

    def _start(self) -> ProcessPoolExecutor:
        exe = python_interpreter()
        if exe is None:
            raise RuntimeError("no Python interpreter found to start worker processes")
        ctx = multiprocessing.get_context("spawn")
        ctx.set_executable(exe)
        if not hasattr(sys, "argv"):  # embedded interpreters may lack it; spawn reads it
            sys.argv = [""]
        # spawn re-runs a main *script* in each child (never a package's __main__, nor Orthanc's
        # embedded main module, which has no file): scripts that index must guard their main code.
        pool = ProcessPoolExecutor(self.processes, mp_context=ctx)
        pool.submit(parse_many, []).result(timeout=60)  # fail now rather than in the middle of a run
        return pool

    def parse(self, items: list[tuple[bytes, bool]]) -> list:
        """One result per item, as `parse_many` gives them."""
        pool = self._pool
        if pool is None:
            return parse_many(items)
        try:
            return pool.submit(parse_many, items).result()
        except BrokenProcessPool:
            pool = self._replace(pool)
        results = []
        for item in items:  # one by one: the head that ended the process shows itself
            try:
                results += pool.submit(parse_many, [item]).result()
            except BrokenProcessPool:
                pool = self._replace(pool)
                results.append(PROCESS_ENDED)
        return results

    def _replace(self, broken: ProcessPoolExecutor) -> ProcessPoolExecutor:
        """A working pool in place of `broken` (started once, whichever thread sees it broken first)."""
        with self._lock:
            if self._pool is broken:
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()
                self.restarts += 1
                log.warning("a header parsing process ended abruptly; %d started again", self.processes)
            return self._pool

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None


__all__ = ["NeedMore", "ParsePool", "parse_many"]
