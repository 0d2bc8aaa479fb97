"""How hard the indexer reads the NAS: the live worker limit, network retries, and when the NAS is gone.

`Governor.slot()` is the gate every head read passes: at most `limit` reads are in flight at once,
whatever the number of reading threads, so lowering the limit really lowers the load on the NAS
(the status's `workers` is this limit).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .errors import NasNetworkError

RETRIES = 3
BACKOFF = 0.5  # seconds before the first retry; doubled each time
NAS_GONE_AFTER = 60.0  # seconds without any answer from the NAS while its requests keep failing on the network
BLOCK = 20  # reads are judged by blocks: the fastest read of each block
SLOWDOWN = 4.0  # blocks whose fastest read is this many times the baseline (plus SLOW_MARGIN) are slow
SLOW_MARGIN = 0.02  # seconds: below this, a read is never slow (loopback or LAN jitter)
CALM = 1.0  # seconds after a change of the worker count before reads are judged again
RAISE_AFTER = 3  # blocks in a row that are not slow before one more worker is added
SLOW_READ_SECONDS = 0.05  # when even the fastest reads take longer, a local mount is suggested


class Stopped(Exception):
    """The run is stopping: a read that waited for a slot does not start."""


class Governor:
    """Sets the live worker limit from read times and network failures; tells when the NAS is gone.

    Reads are judged by blocks of `BLOCK`, by the fastest read of each block: a client busy
    parsing (two cores, a GIL) makes some reads wait, but not all of them, while a NAS or a
    network that is slow makes every read slow. The baseline is the fastest block of the run.
    A slow block means the NAS may be struggling under our requests: the limit goes down to 3/4;
    failed requests halve it. After a change, reads are not judged for `CALM` seconds, so the new
    limit shows its effect first. If a lower limit did not make reads faster, they are slow for
    another reason (a longer network path, a NAS busy with others): that time becomes the new
    baseline, since fewer reads at once would only lose throughput. `RAISE_AFTER` blocks in a row
    that are not slow add one back, up to `Workers`.

    The NAS is gone when its requests keep failing on the network and nothing succeeded for
    `gone_after` seconds: no read, and no other answer -- `last_answer()` for a source that knows
    when the NAS last answered, else `alive()`, called as listed files come in.

    `warning` is set once (a sentence for the status) when even the fastest reads of a remote
    source are slow; the run publishes it.
    """

    def __init__(self, workers: int, gone_after: float = NAS_GONE_AFTER, slow_hint: str | None = None,
                 last_answer: Callable[[], float] | None = None):
        self.max = workers
        self.limit = workers
        self.in_flight = 0  # reads between slot() and its end
        self.gone_after = gone_after
        self.slow_hint = slow_hint  # set for a remote source: how to mount it locally instead
        self.last_answer = last_answer
        self.warning: str | None = None
        self._cond = threading.Condition()
        self.last_success = time.monotonic()
        self.failures_since_success = 0
        self.reads = 0
        self.block_fastest = float("inf")
        self.fastest: float | None = None  # the fastest read of the last block
        self.baseline: float | None = None
        self.good_blocks = 0
        self.calm_until = 0.0
        self.cut_from: float | None = None  # the fastest read when the limit was last lowered for slowness

    @contextmanager
    def slot(self, stop: threading.Event | None = None) -> Iterator[None]:
        """Hold one of the `limit` reads allowed in flight; waits while `limit` are.

        Raises `Stopped` instead of starting a read once `stop` is set (a NAS that stopped answering
        must not get the waiting reads one after the other).
        """
        with self._cond:
            while True:
                if stop is not None and stop.is_set():
                    raise Stopped
                if self.in_flight < self.limit:
                    break
                self._cond.wait(0.1)
            self.in_flight += 1
        try:
            yield
        finally:
            with self._cond:
                self.in_flight -= 1
                self._cond.notify()

    def alive(self) -> None:
        """The NAS answered (listed files came in); says nothing about read times.

        Nothing for a source that tells when the NAS last answered (`last_answer`): listed files may
        have waited in the walk's queue, so their arrival says less than the source does.
        """
        if self.last_answer is not None:
            return
        with self._cond:
            self.last_success = time.monotonic()
            self.failures_since_success = 0

    def success(self, seconds: float) -> None:
        """A head read took `seconds`."""
        with self._cond:
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
                    self.baseline, self.cut_from = fastest, None  # fewer reads at once did not help
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
        with self._cond:
            now = time.monotonic()
            self.failures_since_success += 1
            self.good_blocks = 0
            self.cut_from = None
            if self.limit > 1 and now >= self.calm_until:
                self._set(max(1, self.limit // 2), now)

    def gone(self) -> bool:
        with self._cond:
            last = max(self.last_success, self.last_answer()) if self.last_answer else self.last_success
            return self.failures_since_success > 0 and time.monotonic() - last > self.gone_after

    def _set(self, limit: int, now: float) -> None:
        """Called with the lock held. A lower limit lets reads in flight finish; a higher one wakes waiters."""
        self.limit = limit
        self.good_blocks = 0
        self.calm_until = now + CALM
        self._cond.notify_all()

    def _warn_if_slow(self, fastest: float) -> None:
        if self.slow_hint is None or self.warning is not None or fastest <= SLOW_READ_SECONDS:
            return
        self.warning = (
            f"The NAS answers slowly: even the fastest file headers take {fastest * 1000:.0f} ms to read over "
            f"SMB (a few ms on a local network). Indexing the share mounted on this server would be "
            f"faster — {self.slow_hint}")


def with_retries(fn: Callable, *args, stop: threading.Event, retries: int = RETRIES, backoff: float | None = None,
                 on_failure: Callable[[], None] | None = None, within: float | None = None):
    """Call `fn`, retrying network failures up to `retries` times with exponential backoff (`BACKOFF` s first).

    `on_failure` is told of every failed attempt. With `within` (seconds), no retry starts that
    would, at the pace of the last attempt, end later than that after the first attempt began.
    """
    backoff = BACKOFF if backoff is None else backoff
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
