"""DICOM node benchmark: C-FIND on a large index, C-MOVE against Orthanc's own, Orthanc's REST API meanwhile.

    python bench/dicom_bench.py [--files 1000000] [--series-size 50] [--runs 50] [--move-files 1000]
                                [--move-kb 128] [--skip-find] [--skip-move]

C-FIND: an index of `--files` files in series of `--series-size` is filled straight into the catalog (as
search_bench does), the node runs in this process (no Orthanc) and each query goes through `findscu`,
timed from the process start to its end (so each figure includes findscu's own start, ~10 ms here).

C-MOVE: a series of `--move-files` files of `--move-kb` KB on a local NAS folder, indexed by a real
Orthanc with the node; `movescu` asks the node to move it to `storescp` (writing to disk), while a thread
times `GET /nas/status` and `GET /nas/search` through Orthanc. Then the same series is imported into
Orthanc (through the node: Orthanc's own query/retrieve) and `movescu` asks Orthanc's own DICOM server
to move it to the same `storescp`. A raw read of the files gives the ceiling of the source.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin"), str(REPO / "bench")]

from tests.support.dcmtk import StoreSCP, run  # noqa: E402
from tests.support.dicom import write_series  # noqa: E402
from tests.support.orthanc import OrthancServer, free_port  # noqa: E402

from corpus import plan_corpus  # noqa: E402
from search_bench import fill, percentiles, upgrade  # noqa: E402


def timed(*args) -> float:
    started = time.perf_counter()
    result = run(*args)
    assert result.returncode == 0, result.stderr
    return time.perf_counter() - started


def handler_times(catalog, level: str, unique: str, keys: dict, runs: int) -> tuple[list[float], int]:
    """What the node does for one C-FIND (parse, SQL, every answer dataset), timed in this process."""
    from pydicom.dataset import Dataset

    from orthanc_nas.dicom.query import answer, parse, rows

    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    setattr(identifier, unique, "")
    identifier.PatientName = ""
    for k, v in keys.items():
        setattr(identifier, k, v)
    conn = catalog.reader()
    samples, count = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        query = parse(identifier, patient_root=False)
        count = len([answer(query, row, "NAS") for row in rows(conn, query)])
        samples.append(time.perf_counter() - started)
    return samples, count


def bench_find(files: int, series_size: int, runs: int) -> None:
    from orthanc_nas.catalog import Catalog
    from orthanc_nas.config import parse_dicom_server
    from orthanc_nas.dicom import DicomNode, Peers, RetrievalAudit

    work = Path(tempfile.mkdtemp(prefix="nas-dicom-bench-"))
    try:
        plan = plan_corpus(files, series_size)
        started = time.perf_counter()
        fill(work, plan)
        print(f"index of {files} files / {len(plan)} series filled in {time.perf_counter() - started:.0f} s; "
              f"migrations (search columns, node columns and indexes) {upgrade(work):.1f} s")
        catalog = Catalog(str(work))
        settings = parse_dicom_server({"Enabled": True, "Port": 0, "AllowedCallers": "*"}, "127.0.0.1")
        node = DicomNode(settings, catalog, lambda: None, Peers(settings), RetrievalAudit(str(work)))
        assert node.start()
        some = plan[len(plan) // 3]
        name = some.study.patient.name.split("^")[0][:4]
        queries = [
            ("STUDY", "name prefix", {"PatientName": f"{name}*"}),
            ("STUDY", "date range + modality", {"StudyDate": "20230101-20230115", "ModalitiesInStudy": "CT"}),
            ("STUDY", "one study UID", {"StudyInstanceUID": some.study.uid}),
            ("STUDY", "patient ID", {"PatientID": some.study.patient.patient_id}),
            ("SERIES", "series of a study", {"StudyInstanceUID": some.study.uid}),
            ("SERIES", "one series UID", {"SeriesInstanceUID": some.uid}),
        ]
        echo = [timed("echoscu", "-aec", "NAS", "127.0.0.1", node.port) for _ in range(runs)]
        p50, p95 = percentiles(echo)
        print(f"  {'C-ECHO (findscu/echoscu start-up and association)':48s} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms")
        for level, what, keys in queries:
            unique = "StudyInstanceUID" if level == "STUDY" else "SeriesInstanceUID"
            args = ["findscu", "-S", "-aec", "NAS", "127.0.0.1", node.port, "-k", f"QueryRetrieveLevel={level}",
                    "-k", unique, "-k", "PatientName", "-k", "NumberOfStudyRelatedInstances" if level == "STUDY"
                    else "NumberOfSeriesRelatedInstances"]
            for k, v in keys.items():
                args += ["-k", f"{k}={v}"]
            samples = [timed(*args) for _ in range(runs)]
            p50, p95 = percentiles(samples)
            inner = handler_times(catalog, level, unique, keys, runs * 4)
            q50, q95 = percentiles(inner[0])
            print(f"  C-FIND {level:6s} {what:32s} findscu p50 {p50:6.1f} ms  p95 {p95:6.1f} ms; "
                  f"handler p50 {q50:6.1f} ms  p95 {q95:6.1f} ms ({inner[1]} answers)")
        node.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


class Poller(threading.Thread):
    """Times GET /nas/status and a search through Orthanc, one after the other, until stopped."""

    def __init__(self, server: OrthancServer):
        super().__init__(daemon=True)
        self.server = server
        self.samples: dict[str, list[float]] = {"status": [], "search": []}
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for what, route in (("status", "/nas/status"), ("search", "/nas/search?q=bench")):
                started = time.perf_counter()
                assert self.server.get(route).status_code == 200
                self.samples[what].append(time.perf_counter() - started)
            time.sleep(0.02)

    def report(self, label: str) -> None:
        for what, samples in self.samples.items():
            p50, p95 = percentiles(samples)
            print(f"  {label:28s} GET {what:7s} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms  ({len(samples)} requests)")


def bench_move(count: int, kb: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="nas-move-bench-"))
    try:
        paths = write_series(work / "nas" / "BENCH", count, PatientID="BENCH", PatientName="BENCH^MOVE",
                             pixel_bytes=kb * 1024)
        size = sum(p.stat().st_size for p in paths) / 1e6
        started = time.perf_counter()
        for p in paths:
            p.read_bytes()
        raw = time.perf_counter() - started
        print(f"series of {count} files, {size:.0f} MB; raw read (page cache): {count / raw:.0f} files/s, "
              f"{size / raw:.0f} MB/s")
        ws_port, node_port, dicom_port = free_port(), free_port(), free_port()
        server = OrthancServer(work / "orthanc", nas={
            "Connection": {"Type": "local", "Path": str(work / "nas")}, "DataDirectory": str(work / "nasdata"),
            "ShareServer": {"Port": free_port()}, "DicomServer": {"Enabled": True, "Port": node_port}},
            extra={"DicomServerEnabled": True, "DicomAet": "ORTHANC", "DicomPort": dicom_port,
                   "DicomModalities": {"ws": ["WS1", "127.0.0.1", ws_port]}})
        server.start()
        try:
            server.index()
            series = server.get("/nas/search?q=bench").json()[0]["SeriesInstanceUID"]
            idle = Poller(server)
            idle.start()
            time.sleep(3)
            idle.halt.set()
            idle.join()
            idle.report("idle")

            def move(port: int, called: str, label: str, poll: bool) -> float:
                with StoreSCP(work / f"ws-{label}", port=ws_port) as scp:
                    poller = Poller(server)
                    if poll:
                        poller.start()
                    elapsed = timed("movescu", "-S", "-aet", "WS1", "-aec", called, "-aem", "WS1", "127.0.0.1",
                                    port, "-k", "QueryRetrieveLevel=SERIES", "-k", f"SeriesInstanceUID={series}")
                    poller.halt.set()
                    received = len(scp.files())
                if poll:
                    poller.join()
                print(f"  {label:28s} C-MOVE {received} files in {elapsed:.1f} s: {received / elapsed:.0f} files/s, "
                      f"{size / elapsed:.0f} MB/s")
                if poll:
                    poller.report(f"during {label}")
                shutil.rmtree(work / f"ws-{label}", ignore_errors=True)
                return received / elapsed

            node = move(node_port, "NAS", "the node", poll=True)
            query = server.post("/modalities/nas/query", json={"Level": "Series",
                                                                "Query": {"SeriesInstanceUID": series}}).json()
            started = time.perf_counter()
            assert server.post(f"/queries/{query['ID']}/retrieve", data="ORTHANC", timeout=600).status_code == 200
            print(f"  import into Orthanc through the node: {time.perf_counter() - started:.1f} s")
            own = move(dicom_port, "ORTHANC", "Orthanc's own", poll=True)
            print(f"  ratios: the node / Orthanc's own C-MOVE {node / own:.2f}; the node / raw read "
                  f"{node / (count / raw):.3f}; Orthanc's own / raw read {own / (count / raw):.3f}")
        finally:
            server.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--series-size", type=int, default=50)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--move-files", type=int, default=1000)
    parser.add_argument("--move-kb", type=int, default=128)
    parser.add_argument("--skip-find", action="store_true")
    parser.add_argument("--skip-move", action="store_true")
    args = parser.parse_args()
    if not args.skip_move:
        bench_move(args.move_files, args.move_kb)
    if not args.skip_find:
        bench_find(args.files, args.series_size, args.runs)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    # dcmtk (storescp, movescu, and Orthanc's own DICOM client) keeps Nagle's algorithm unless told: its
    # C-STOREs then wait ~40 ms each for delayed acknowledgements. Every peer here runs without it.
    os.environ["TCP_NODELAY"] = "1"
    sys.exit(main())
