"""The parallel, streaming folder walk shared by the sources.

Listing one folder at a time leaves the NAS idle between round trips; here a few
threads take folders from a shared stack, so the NAS answers several listings at
once (the threads wait on the network with the GIL released). What a source
knows is how to list one folder: `list_folder(rel)` yields the folder's files
(`FileEntry`), its subfolders (`Folder`) and per-entry problems (`WalkError`).
A `NasError` raised while listing becomes a `WalkError` for that folder and the
walk goes on; a network error is retried first, since the consumer of the walk
cannot ask for one folder again. Entries go out in chunks through a bounded
queue, so memory does not grow with the number of files, and a slow consumer
slows the listing down.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..errors import NasError, NasNetworkError
from .base import FileEntry, WalkError

log = logging.getLogger(__name__)

WALK_THREADS = 4
CHUNK = 512  # entries per queue item: one put/get per chunk instead of per file
QUEUE_CHUNKS = 32  # bounded: at most QUEUE_CHUNKS * CHUNK entries wait in memory
RETRIES = 3  # network errors listing a folder: retried this many times,
BACKOFF = 0.5  # after 0.5, 1, 2 s


@dataclass(frozen=True, slots=True)
class Folder:
    """A subfolder found while listing, relative to the NAS root, to be listed in turn."""

    path: str


ListFolder = Callable[[str], Iterable[FileEntry | WalkError | Folder]]

_DONE = object()


def put_unless(out: queue.Queue, item, stopped: Callable[[], bool]) -> bool:
    """Put `item` into the bounded queue `out`, waiting while it is full; False, not put, once `stopped()`
    (the consumer went away, or the walk was stopped): a producer thread never blocks for ever."""
    while not stopped():
        try:
            out.put(item, timeout=0.2)
            return True
        except queue.Full:
            continue
    return False


def parallel_walk(list_folder: ListFolder, stop: threading.Event, threads: int = WALK_THREADS,
                  retries: int = RETRIES, top: str = "", chunks: bool = False) -> Iterator:
    """Stream every file under the folder `top` (`""`: the root), listing folders on `threads` threads.

    Yields `FileEntry | WalkError` items; with `chunks`, lists of them as the listing threads hand
    them over (those waiting already joined, up to `CHUNK` entries or so: a consumer slower than the
    walk, such as indexing looking up each list in the index, then makes fewer, larger lookups), and an
    empty list whenever nothing came for a moment (so the consumer can do other work meanwhile).
    Ends early, without error, when `stop` is set or the consumer stops iterating.
    """
    threads = max(1, threads)
    out: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
    halt = threading.Event()  # set when the consumer goes away
    folders: list[str] = [top]
    cond = threading.Condition()
    state = {"pending": 1, "finished": 0}  # folders listed or waiting; workers that returned

    def stopped() -> bool:
        return halt.is_set() or stop.is_set()

    def put(item) -> bool:
        return put_unless(out, item, stopped)

    def list_one(rel: str) -> list[str]:
        """List one folder, sending files out in chunks; returns its subfolders.

        A network error before the folder gave anything is retried with backoff (the
        consumer cannot ask for one folder again); after that, or after other errors,
        the folder becomes a WalkError.
        """
        for attempt in range(retries + 1):
            subdirs: list[str] = []
            chunk: list = []
            emitted = False
            items = list_folder(rel)
            try:
                for item in items:
                    emitted = True
                    if isinstance(item, Folder):
                        subdirs.append(item.path)
                        continue
                    chunk.append(item)
                    if len(chunk) >= CHUNK:
                        if not put(chunk):
                            return []
                        chunk = []
            except NasNetworkError as exc:
                if not emitted and attempt < retries and not stop.wait(BACKOFF * 2 ** attempt) and not stopped():
                    continue
                chunk.append(WalkError(rel or "/", exc))
            except NasError as exc:
                chunk.append(WalkError(rel or "/", exc))
            except Exception as exc:  # a bug must not hang the walk: report the folder and go on
                log.exception("listing folder %r failed", rel)
                chunk.append(WalkError(rel or "/", NasError(f"folder {rel or '/'}: {exc}")))
            finally:
                close = getattr(items, "close", None)
                if close is not None:  # a generator left early (walk stopped) releases its folder handle now
                    close()
            if chunk:
                put(chunk)
            return subdirs
        return []  # not reached: the last attempt always returns

    def worker() -> None:
        while True:
            with cond:
                while not folders and state["pending"] and not stopped():
                    cond.wait(0.2)
                if not folders or stopped():
                    state["finished"] += 1
                    if state["finished"] == threads:
                        put(_DONE)
                    cond.notify_all()
                    return
                rel = folders.pop()  # depth first: keeps the stack short
            subdirs = list_one(rel)
            with cond:
                folders.extend(reversed(subdirs))
                state["pending"] += len(subdirs) - 1
                cond.notify_all()

    workers = [threading.Thread(target=worker, name=f"nas-walk-{i}", daemon=True) for i in range(threads)]
    for t in workers:
        t.start()
    try:
        while not stop.is_set():  # checked between chunks, not only when the queue runs dry
            try:
                item = out.get(timeout=0.2)
            except queue.Empty:
                if chunks:
                    yield []
                continue
            if item is _DONE:
                return
            if not chunks:
                yield from item
                continue
            ended = False
            while len(item) < CHUNK:  # the chunks already waiting go as one (never waits for more)
                try:
                    more = out.get_nowait()
                except queue.Empty:
                    break
                if more is _DONE:
                    ended = True
                    break
                item = [*item, *more]
            yield item
            if ended:
                return
    finally:
        halt.set()
        with cond:
            cond.notify_all()
