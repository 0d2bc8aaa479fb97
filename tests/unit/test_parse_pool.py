"""The parse pool survives its worker processes ending abruptly (the out-of-memory killer, a signal)."""

import os
import signal
import time
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import pytest
from tests.support.dicom import write_series

from orthanc_nas import parsing
from orthanc_nas.parsing import PROCESS_ENDED, ParsePool, parse_many


@pytest.fixture
def heads(tmp_path):
    return [(p.read_bytes(), True) for p in write_series(tmp_path, 40)]


def _kill_workers(pool: ParsePool) -> set[int]:
    pids = set(pool._pool._processes)  # the executor's worker processes (ProcessPoolExecutor keeps them so)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{pid}/stat") and
                                              open(f"/proc/{pid}/stat").read().split()[2] != "Z" for pid in pids):
        time.sleep(0.01)
    return pids


def test_killed_worker_processes_cost_a_batch_nothing(heads):
    pool = ParsePool(2)
    try:
        assert pool.processes == 2
        killed = _kill_workers(pool)
        results = pool.parse(heads)  # the pool is broken: started again, the batch parsed head by head
        assert results == parse_many(heads) and all(isinstance(r, dict) for r in results)
        assert pool.restarts == 1 and not killed & set(pool._pool._processes)
        assert pool.parse(heads[:3]) == parse_many(heads[:3])  # and it goes on working
    finally:
        pool.close()


class _Executor:
    """A pool whose worker 'ends' whenever it is given the head `b"END"` (and stays broken, as a real one)."""

    def __init__(self):
        self.broken = False

    def submit(self, fn, items):
        if self.broken:
            raise BrokenProcessPool("broken")
        future = Future()
        if any(buf == b"END" for buf, _ in items):
            self.broken = True
            future.set_exception(BrokenProcessPool("a process ended"))
        else:
            future.set_result(fn(items))
        return future

    def shutdown(self, wait=True, cancel_futures=False):
        pass


def test_a_head_that_ends_its_process_again_is_that_files_error_only(monkeypatch, heads):
    monkeypatch.setattr(ParsePool, "_start", lambda self: _Executor())
    pool = ParsePool(2)
    batch = heads[:2] + [(b"END", True)] + heads[2:4]
    results = pool.parse(batch)
    assert results[2] == PROCESS_ENDED
    assert results[:2] + results[3:] == parse_many(heads[:4])
    assert pool.restarts == 2  # once for the batch, once for the head
    assert parsing.PROCESS_ENDED.startswith("the process parsing this header ended")
