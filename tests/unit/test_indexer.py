import shutil
import threading
import time

import pytest
from tests.support.dicom import write_dicom, write_series

from orthanc_nas import governor as governor_mod
from orthanc_nas import indexer as indexer_mod
from orthanc_nas.catalog import Catalog
from orthanc_nas.errors import NasNetworkError
from orthanc_nas.indexer import Indexer
from orthanc_nas.sources.local import LocalSource
from orthanc_nas.status import IndexStatus


@pytest.fixture
def nas(tmp_path):
    root = tmp_path / "nas"
    write_series(root / "P1" / "CT", 5, PatientName="DOE^JOHN")
    write_series(root / "P2" / "MR one", 3, PatientName="Müller^Jürgen", charset="ISO_IR 100")
    study = "1.2.826.0.1.3680043.8.498.1"
    for i in range(2):  # no SeriesInstanceUID: grouped by study + series number
        write_dicom(root / "P3" / f"x{i}.dcm", SeriesInstanceUID=None, StudyInstanceUID=study, SeriesNumber=4)
    (root / "notes.txt").write_text("not an image")
    (root / "empty.dcm").write_bytes(b"")
    (root / "page.dcm").write_text("<html><body>404</body></html>")
    return root


def make(tmp_path, root, processes=0, source=None, **kw):
    data = tmp_path / "data"
    catalog, status = Catalog(str(data)), IndexStatus(str(data))
    src = source or LocalSource(str(root))
    return Indexer(catalog, status, lambda: src, workers=4, parse_processes=processes, **kw), catalog


def series_counts(catalog):
    return sorted(r[0] for r in catalog.reader().execute("SELECT file_count FROM series"))


def test_index_counts_groups_and_errors(tmp_path, nas):
    ix, catalog = make(tmp_path, nas)
    s = ix.run()
    assert s["phase"] == "done" and not s["running"]
    assert s["enumerated_files"] == 13 and s["files_processed"] == 13
    assert s["errors"] == 3 and s["series_count"] == 3
    assert {e["path"] for e in s["error_samples"]} == {"notes.txt", "empty.dcm", "page.dcm"}
    assert series_counts(catalog) == [2, 3, 5]
    names = {r[0] for r in catalog.reader().execute("SELECT PatientName FROM series")}
    assert "Müller^Jürgen" in names


def test_worker_processes_give_the_same_index(tmp_path, nas):
    ix, catalog = make(tmp_path, nas, processes=2)
    s = ix.run()
    assert s["errors"] == 3 and series_counts(catalog) == [2, 3, 5]


def test_unchanged_files_are_skipped_and_changed_ones_read(tmp_path, nas):
    ix, catalog = make(tmp_path, nas)
    ix.run()
    s = ix.run()
    assert s["files_skipped"] == 13 and s["files_processed"] == 13 and s["errors"] == 0
    write_dicom(nas / "P1" / "CT" / "IM00001.dcm", PatientName="RENAMED^NOW")
    s = ix.run()
    assert s["files_skipped"] == 12
    assert "RENAMED^NOW" in {r[0] for r in catalog.reader().execute("SELECT PatientName FROM series")}
    s = ix.run(full=True)
    assert s["files_skipped"] == 0


def test_files_gone_from_the_nas_leave_the_index(tmp_path, nas):
    ix, catalog = make(tmp_path, nas)
    ix.run()
    shutil.rmtree(nas / "P1")
    s = ix.run()
    assert s["files_removed"] == 5 and series_counts(catalog) == [2, 3]


def test_emptied_root_keeps_the_index(tmp_path, nas):
    ix, catalog = make(tmp_path, nas)
    ix.run()
    for child in nas.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()
    s = ix.run()
    assert s["phase"] == "done" and any("unmounted" in w for w in s["warnings"])
    assert series_counts(catalog) == [2, 3, 5]


def test_missing_root_fails_and_keeps_the_index(tmp_path, nas):
    ix, catalog = make(tmp_path, nas)
    ix.run()
    nas.rename(tmp_path / "elsewhere")
    s = ix.run()
    assert s["phase"] == "failed" and s["failure"]["kind"] == "not_found"
    assert series_counts(catalog) == [2, 3, 5]
    assert s["series_count"] == 3  # the status says what the index still holds, not 0


class FlakySource(LocalSource):
    """A local folder whose reads fail on the network after `good` files (the NAS going away)."""

    def __init__(self, root, good):
        super().__init__(root)
        self.good = good
        self.reads = 0
        self.lock = threading.Lock()

    def read_head(self, path, size):
        with self.lock:
            self.reads += 1
            if self.reads > self.good:
                raise NasNetworkError("connection timed out")
        return super().read_head(path, size)


def test_a_nas_that_stops_answering_fails_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(governor_mod, "BACKOFF", 0.01)
    root = tmp_path / "nas"
    for s in range(20):
        write_series(root / f"s{s}", 10)
    ix, catalog = make(tmp_path, root, source=FlakySource(str(root), good=40), gone_after=1.0)
    started = time.monotonic()
    s = ix.run()
    assert s["phase"] == "failed" and s["failure"]["kind"] == "network"
    assert time.monotonic() - started < 30
    assert s["errors"] < 200  # it did not plough on through every file
    assert catalog.counts()["files"] >= 1  # what was read before is kept


def test_transient_failures_are_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(governor_mod, "BACKOFF", 0.01)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise NasNetworkError("reset")
        return "ok"

    assert indexer_mod.with_retries(flaky, stop=threading.Event()) == "ok" and len(calls) == 3
    with pytest.raises(NasNetworkError):
        indexer_mod.with_retries(lambda: (_ for _ in ()).throw(NasNetworkError("down")), stop=threading.Event())


class SlowSource(LocalSource):
    """A folder whose reads take 10 ms each, so a run lasts long enough to be stopped in the middle."""

    def read_head(self, path, size):
        time.sleep(0.01)
        return super().read_head(path, size)


def test_stop_cancels_at_a_file_boundary_and_resume_finishes(tmp_path):
    root = tmp_path / "nas"
    for s in range(30):
        write_series(root / f"s{s}", 20)
    ix, catalog = make(tmp_path, root, source=SlowSource(str(root)))
    ix.start()
    deadline = time.monotonic() + 30
    while ix.status.files_processed < 50 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ix.stop()
    assert ix.wait(30)
    s = ix.status.snapshot()
    assert s["phase"] == "cancelled"
    kept = catalog.counts()["files"]
    assert 0 < kept < 600
    s = ix.run()
    assert s["phase"] == "done" and s["files_skipped"] == kept and catalog.counts()["files"] == 600


def test_a_second_start_while_running_is_busy(tmp_path, nas):
    from orthanc_nas.errors import Busy
    root = tmp_path / "big"
    for s in range(20):
        write_series(root / f"s{s}", 20)
    ix, _ = make(tmp_path, root)
    ix.start()
    with pytest.raises(Busy):
        ix.start()
    ix.stop()
    ix.wait(30)


def test_a_start_right_after_the_status_says_done_is_not_busy(tmp_path, nas, monkeypatch):
    """The status ends a run before its thread has closed the catalog: a client polling the status
    and starting the next run at once must not be told the indexing is busy."""
    ix, _ = make(tmp_path, nas)
    closing = threading.Event()
    close = indexer_mod.CatalogWriter.close

    def slow_close(writer):
        closing.set()
        time.sleep(0.5)
        close(writer)

    monkeypatch.setattr(indexer_mod.CatalogWriter, "close", slow_close)
    ix.start()
    assert closing.wait(30) and not ix.status.running
    ix.start()  # no Busy
    assert ix.wait(30) and ix.status.phase == "done"


# -- the governor -------------------------------------------------------------------------------


class Clock:
    """Stands in for time.monotonic in the indexer module, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    c = Clock()
    monkeypatch.setattr(indexer_mod.time, "monotonic", c)
    return c


def reads(governor, clock, seconds, blocks=1, fast_one=None):
    """Feed `blocks` blocks of reads taking `seconds` (one read of each block taking `fast_one`)."""
    for _ in range(blocks):
        for i in range(indexer_mod.BLOCK):
            governor.success(fast_one if fast_one is not None and i == 3 else seconds)
            clock.now += 0.01
        clock.now += indexer_mod.CALM  # each block judged after the calm of the previous change


def test_governor_lowers_workers_when_every_read_slows_and_raises_them_when_the_nas_recovers(tmp_path, clock):
    g = indexer_mod.Governor(12)
    reads(g, clock, 0.002, blocks=3)
    assert g.limit == 12 and g.baseline == 0.002
    reads(g, clock, 0.2)  # the NAS struggles
    assert g.limit == 9
    reads(g, clock, 0.05)  # fewer workers made reads faster, still slow: fewer again
    assert g.limit == 6
    reads(g, clock, 0.002, blocks=indexer_mod.RAISE_AFTER)
    assert g.limit == 7
    reads(g, clock, 0.002, blocks=indexer_mod.RAISE_AFTER * 10)
    assert g.limit == 12


def test_governor_ignores_reads_slowed_by_a_busy_client(clock):
    g = indexer_mod.Governor(12)
    reads(g, clock, 0.002, blocks=3)
    reads(g, clock, 0.3, blocks=10, fast_one=0.003)  # most reads waited for the CPU, not for the NAS
    assert g.limit == 12


def test_governor_takes_a_slower_network_as_the_new_normal(clock):
    """Fewer workers do not shorten a longer network path: after one cut that did not help, the count goes back up."""
    g = indexer_mod.Governor(12)
    reads(g, clock, 0.002, blocks=3)
    reads(g, clock, 0.1)
    assert g.limit == 9
    reads(g, clock, 0.1)  # no faster with 9
    assert g.limit == 9 and g.baseline == 0.1
    reads(g, clock, 0.1, blocks=indexer_mod.RAISE_AFTER * 3 * 4)
    assert g.limit == 12


def test_governor_halves_on_failures_and_knows_when_the_nas_is_gone(clock):
    g = indexer_mod.Governor(12, gone_after=60)
    reads(g, clock, 0.002)
    g.failure()
    assert g.limit == 6
    g.failure()  # within the calm of the last change: one cut per calm
    assert g.limit == 6
    clock.now += 58  # the last read was 1.2 s ago
    assert not g.gone()
    g.alive()  # a listing came back: the NAS is there
    clock.now += 59
    assert not g.gone()
    g.failure()
    assert g.limit == 3
    clock.now += 2
    assert g.gone()
    g.success(0.01)
    assert not g.gone()


def test_governor_warns_once_about_a_slow_remote_nas(clock):
    g = indexer_mod.Governor(12, slow_hint="Linux: mount -t cifs //nas/dicom /mnt/nas")
    reads(g, clock, 0.2, blocks=5)
    assert "mount -t cifs //nas/dicom" in g.warning
    local = indexer_mod.Governor(12)
    reads(local, clock, 0.2, blocks=5)  # a slow local disk: no mount to suggest
    assert local.warning is None


def test_retries_tell_each_failure_and_keep_to_their_time_budget(monkeypatch):
    monkeypatch.setattr(governor_mod, "BACKOFF", 0.01)
    failures = []

    def slow_failure():
        time.sleep(0.3)
        raise NasNetworkError("no answer")

    started = time.monotonic()
    with pytest.raises(NasNetworkError):
        indexer_mod.with_retries(slow_failure, stop=threading.Event(), backoff=0.01,
                                 on_failure=lambda: failures.append(1), within=0.5)
    assert len(failures) == 1 and time.monotonic() - started < 0.5  # a second try would end after 0.6 s
    with pytest.raises(NasNetworkError):
        indexer_mod.with_retries(slow_failure, stop=threading.Event(), backoff=0.01,
                                 on_failure=lambda: failures.append(1))
    assert len(failures) == 1 + 1 + governor_mod.RETRIES


class UnreadableSource(LocalSource):
    """A local folder where some files cannot be read: on the network, or access denied."""

    def __init__(self, root, failing: dict):
        super().__init__(root)
        self.failing = failing  # path -> exception

    def read_head(self, path, size):
        if path in self.failing:
            raise self.failing[path]
        return super().read_head(path, size)


def test_files_the_nas_did_not_give_keep_their_rows_and_are_read_next_time(tmp_path, nas, monkeypatch):
    from orthanc_nas.errors import NasPermissionError

    monkeypatch.setattr(governor_mod, "BACKOFF", 0.001)
    source = UnreadableSource(str(nas), {})
    ix, catalog = make(tmp_path, nas, source=source)
    ix.run()
    before = series_counts(catalog)
    source.failing = {"P1/CT/IM00002.dcm": NasNetworkError("connection reset"),
                      "P2/MR one/IM00001.dcm": NasPermissionError("access denied")}
    s = ix.run(full=True)
    assert s["phase"] == "done" and s["errors"] == 2 + 3  # and the 3 files that are not DICOM
    assert series_counts(catalog) == before  # neither file left its series
    source.failing = {}
    write_dicom(nas / "P4" / "new.dcm", PatientName="NEW^FILE")
    source.failing = {"P4/new.dcm": NasPermissionError("access denied")}
    s = ix.run()
    assert s["errors"] == 1 and "P4/new.dcm" not in {r[0] for r in catalog.reader().execute("SELECT path FROM files")}
    source.failing = {}
    s = ix.run()  # unchanged on the NAS, but never read: read now
    assert s["errors"] == 0 and s["files_processed"] - s["files_skipped"] == 1


def test_a_run_after_the_nas_was_gone_starts_afresh(tmp_path, monkeypatch):
    monkeypatch.setattr(governor_mod, "BACKOFF", 0.01)
    root = tmp_path / "nas"
    for s in range(10):
        write_series(root / f"s{s}", 10)
    source = FlakySource(str(root), good=20)
    ix, catalog = make(tmp_path, root, source=source, gone_after=0.5)
    ix.status.start(4)  # as the command line does before run()
    assert ix.run()["phase"] == "failed"
    source.good = 10 ** 6
    ix.status.start(4)
    s = ix.run()
    assert s["phase"] == "done" and catalog.counts()["files"] == 100


def test_governor_asks_the_source_when_the_nas_last_answered(clock):
    answered = {"at": clock.now}
    g = indexer_mod.Governor(12, gone_after=60, last_answer=lambda: answered["at"])
    g.failure()
    clock.now += 50
    answered["at"] = clock.now  # a folder listing came back
    clock.now += 50
    assert not g.gone()
    clock.now += 11
    assert g.gone()
