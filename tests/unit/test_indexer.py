import shutil
import threading
import time

import pytest
from tests.support.dicom import write_dicom, write_series

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
    monkeypatch.setattr(indexer_mod, "BACKOFF", 0.01)
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
    monkeypatch.setattr(indexer_mod, "BACKOFF", 0.01)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise NasNetworkError("reset")
        return "ok"

    assert indexer_mod.with_retries(flaky, stop=threading.Event()) == "ok" and len(calls) == 3
    with pytest.raises(NasNetworkError):
        indexer_mod.with_retries(lambda: (_ for _ in ()).throw(NasNetworkError("down")), stop=threading.Event())


def test_stop_cancels_at_a_file_boundary_and_resume_finishes(tmp_path):
    root = tmp_path / "nas"
    for s in range(30):
        write_series(root / f"s{s}", 20)
    ix, catalog = make(tmp_path, root)
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
