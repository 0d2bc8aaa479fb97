"""parallel_walk (shared by the sources) and the LocalSource walk built on it."""

from __future__ import annotations

import os
import queue
import threading
import time

from orthanc_nas.errors import NasError, NasNetworkError, NasPermissionError
from orthanc_nas.sources import walk
from orthanc_nas.sources.base import FileEntry, WalkError
from orthanc_nas.sources.local import LocalSource
from orthanc_nas.sources.walk import CHUNK, Folder, parallel_walk


def tree_lister(depth: int, width: int, files: int):
    """A synthetic tree: every folder has `width` subfolders (down to `depth`) and `files` files."""

    def list_folder(rel: str):
        level = rel.count("/") + 1 if rel else 0
        prefix = f"{rel}/" if rel else ""
        for i in range(files):
            yield FileEntry(f"{prefix}f{i}", i, 0)
        if level < depth:
            for i in range(width):
                yield Folder(f"{prefix}d{i}")

    return list_folder


def test_every_file_once_whatever_the_thread_count():
    for threads in (1, 3, 8):
        paths = [e.path for e in parallel_walk(tree_lister(3, 3, 5), threading.Event(), threads)]
        assert len(paths) == len(set(paths)) == 5 * (1 + 3 + 9 + 27)


def test_a_failing_folder_is_a_walk_error_and_the_walk_goes_on():
    base = tree_lister(2, 2, 2)

    def list_folder(rel):
        if rel == "d0":
            raise NasPermissionError("folder d0: access denied")
        if rel == "d1/d0":
            yield FileEntry("d1/d0/before", 1, 0)
            raise RuntimeError("a bug in a source")  # reported, not a hung walk
        yield from base(rel)

    items = list(parallel_walk(list_folder, threading.Event(), 4))
    errors = {e.path: e.error for e in items if isinstance(e, WalkError)}
    assert isinstance(errors["d0"], NasPermissionError) and isinstance(errors["d1/d0"], NasError)
    files = {e.path for e in items if isinstance(e, FileEntry)}
    assert {"f0", "d1/f0", "d1/d1/f1", "d1/d0/before"} <= files and not any(p.startswith("d0/") for p in files)


def test_stop_ends_the_walk_early():
    stop = threading.Event()
    seen = 0
    for _ in parallel_walk(tree_lister(6, 4, 50), stop, 4):
        seen += 1
        if seen == 10:
            stop.set()
    assert seen < 10 + 2 * CHUNK  # what was already queued in the current chunk, not the 270,000 files


def test_local_walk_links_and_errors(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.dcm").write_bytes(b"12345")
    (tmp_path / "top.dcm").write_bytes(b"1")
    os.symlink("..", tmp_path / "a" / "loop")  # a link loop must not run forever
    os.symlink("nowhere", tmp_path / "dangling")  # a dangling link is skipped silently
    items = list(LocalSource(str(tmp_path)).walk(threading.Event()))
    assert sorted((e.path, e.size) for e in items if isinstance(e, FileEntry)) == [("a/b/x.dcm", 5), ("top.dcm", 1)]
    assert not [e for e in items if isinstance(e, WalkError)]
    missing = list(LocalSource(str(tmp_path / "missing")).walk(threading.Event()))
    assert [(e.path, e.error.kind) for e in missing] == [("/", "not_found")]


def test_network_errors_listing_a_folder_are_retried(monkeypatch):
    monkeypatch.setattr(walk, "BACKOFF", 0.01)
    failures = {"d0": 2, "d1": 99}
    base = tree_lister(1, 2, 3)

    def list_folder(rel):
        if failures.get(rel, 0) > 0:
            failures[rel] -= 1
            raise NasNetworkError(f"folder {rel}: no answer")
        yield from base(rel)

    items = list(parallel_walk(list_folder, threading.Event(), 2))
    assert {e.path for e in items if isinstance(e, FileEntry) and e.path.startswith("d0/")} == {"d0/f0", "d0/f1", "d0/f2"}
    assert [(e.path, e.error.kind) for e in items if isinstance(e, WalkError)] == [("d1", "network")]
    assert failures["d1"] == 99 - 4  # one try and three retries


def test_a_hand_off_to_a_consumer_that_went_away_gives_up_instead_of_blocking():
    """`put_unless` is the one bounded hand-off of the walk's threads and of the Windows listers' pump."""
    out = queue.Queue(maxsize=1)
    gone = threading.Event()
    assert walk.put_unless(out, "a", gone.is_set) and out.get_nowait() == "a"
    out.put("full")
    threading.Timer(0.3, gone.set).start()
    started = time.monotonic()
    assert not walk.put_unless(out, "b", gone.is_set)  # waited while full, then the consumer left
    assert 0.2 < time.monotonic() - started < 5 and out.get_nowait() == "full"


def test_the_windows_listers_pump_hands_over_through_the_walks_hand_off(monkeypatch):
    from orthanc_nas.sources import windows

    handed = []
    monkeypatch.setattr(windows, "put_unless", lambda out, item, stopped: handed.append(item) or
                        walk.put_unless(out, item, stopped))
    def items():
        yield from ("x", "y")

    chunks = windows._chunks(items(), threading.Event())
    assert next(c for c in chunks if c) == ["x", "y"] and ["x", "y"] in handed
    chunks.close()


def test_chunks_waiting_for_a_slow_consumer_go_as_one():
    # 3 levels of 3 folders, 5 files each: 40 folders handed over as 40 chunks of 5
    walker = parallel_walk(tree_lister(3, 3, 5), threading.Event(), 4, chunks=True)
    time.sleep(0.5)  # a consumer busy elsewhere (indexing waiting for the database): the walk queues its chunks
    sizes = [len(chunk) for chunk in walker if chunk]
    assert sum(sizes) == 40 * 5 and max(sizes) > 5 and all(size <= CHUNK + 5 for size in sizes)
