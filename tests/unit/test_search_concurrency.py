"""Searching while an indexing run writes: never a half-written batch, never a long wait."""

import threading
import time

from tests.support.series import record, write

from orthanc_nas.catalog import Catalog
from orthanc_nas.catalog_writer import CatalogWriter
from orthanc_nas.search import SearchParams, search, series_detail

STEADY = 20  # series that get one more file in every batch
BATCHES = 150


def batch(number: int) -> list[tuple[str, dict]]:
    """One file more for each steady series, and one new series dated after all earlier ones."""
    files = [(f"steady{k}/{number}.dcm",
              record(PatientName=f"STEADY^P{k}", StudyInstanceUID="1.2.3", SeriesInstanceUID=f"1.2.3.{k}",
                     StudyDate="20000101", SOPInstanceUID=f"1.2.3.{k}.{number}", InstanceNumber=number))
             for k in range(STEADY)]
    day = f"2001{1 + number // 28:02d}{1 + number % 28:02d}"
    files.append((f"new/{number}.dcm", record(PatientName=f"NEW^{number}", StudyInstanceUID=f"1.2.4.{number}",
                                              SeriesInstanceUID=f"1.2.4.{number}.1", StudyDate=day)))
    return files


def test_searches_during_writes_see_whole_batches_only(tmp_path):
    catalog = Catalog(str(tmp_path))
    write(catalog, batch(0))
    done = threading.Event()
    failures: list[str] = []
    waits: list[float] = []

    def writer():
        w = CatalogWriter(catalog)
        try:
            for number in range(1, BATCHES):
                write(catalog, batch(number), w)
        finally:
            w.close()
            done.set()

    def reader():
        conn = Catalog(str(tmp_path)).reader()  # a connection of this thread, as a request thread has
        checks = 0
        while not done.is_set() or checks < 5:
            started = time.monotonic()
            steady = search(conn, SearchParams(terms=("steady",), limit=STEADY))
            newest = search(conn, SearchParams(limit=1))  # the page and the count from one snapshot
            detail = series_detail(conn, steady.series[0]["series_key"])
            waits.append(time.monotonic() - started)
            counts = {s["file_count"] for s in steady.series}
            if len(counts) != 1 or steady.total != STEADY:
                failures.append(f"steady series differ: {counts}, total {steady.total}")
            new_series = newest.total - STEADY
            if newest.series[0]["PatientName"] != f"NEW^{new_series - 1}":
                failures.append(f"total {newest.total} but newest {newest.series[0]['PatientName']}")
            if len(detail["files"]) != detail["file_count"]:
                failures.append(f"{len(detail['files'])} files listed, file_count {detail['file_count']}")
            checks += 1

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[:5]
    assert len(waits) > 20
    assert max(waits) < 1.0, f"a search waited {max(waits):.3f} s"
    final = search(catalog.reader(), SearchParams(terms=("steady",)))
    assert {s["file_count"] for s in final.series} == {BATCHES}
