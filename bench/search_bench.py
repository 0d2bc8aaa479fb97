"""Search benchmark: typical queries on an index of a million files, through the handler and through Orthanc.

    python bench/search_bench.py [--files 1000000] [--series-size 50] [--runs 200] [--keep DIR]

The index is filled straight into the catalog (no DICOM files are written):
the series of `bench/corpus.py`'s plan (realistic names in several
languages and cases, IDs, dates, descriptions, folders) and one row per file.
It is filled at schema version 1 and then opened by the current code, so the
timed upgrade is the migration an existing index goes through (folding the
names of every series). Each query then runs `--runs` times through
`router.dispatch` (what the Orthanc callback calls) and through a real
Orthanc's REST API; the script prints p50/p95 per query, the same while a
writer thread commits batches of 256 files at indexing's pace, and the
index's size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin"), str(REPO / "bench")]

from tests.support.orthanc import OrthancServer  # noqa: E402

from corpus import PIXEL_BYTES, Series, plan_corpus  # noqa: E402
from orthanc_nas.api import router  # noqa: E402
from orthanc_nas.catalog import Catalog, connect, migrate, series_key  # noqa: E402
from orthanc_nas.catalog_migrations import MIGRATIONS  # noqa: E402
from orthanc_nas.catalog_writer import CatalogWriter  # noqa: E402
from orthanc_nas.http import Request, parse_query  # noqa: E402
from orthanc_nas.sources import FileEntry  # noqa: E402

#: (what it stands for, query parameters as a browser sends them)
QUERIES = [
    ("a last name", {"q": "muller"}),
    ("a partial patient ID", None),  # picked from the corpus: 5 digits in the middle of a real ID
    ("a two-word name", {"q": "jose garcia"}),
    ("a description word", {"q": "thorax"}),
    ("modality + dates", {"modality": "CT", "date_from": "20230101", "date_to": "20230630"}),
    ("no match", {"q": "zzyzx"}),
    ("everything (no q)", {}),
    ("one letter (most match)", {"q": "e"}),
]


def series_record(series: Series) -> dict:
    study, patient = series.study, series.study.patient
    return {
        "PatientName": patient.name, "PatientID": patient.patient_id,
        "PatientBirthDate": patient.birth_date.strftime("%Y%m%d"), "PatientSex": patient.sex,
        "StudyInstanceUID": study.uid, "StudyDate": study.study_date.strftime("%Y%m%d"),
        "StudyDescription": study.description, "AccessionNumber": study.accession,
        "SeriesInstanceUID": series.uid if series.has_uid else None, "SeriesNumber": series.number,
        "SeriesDescription": series.description, "Modality": series.modality,
    }


def fill(data_dir: Path, plan: list[Series]) -> None:
    """An index at schema version 1 holding every file of the plan, written in path order."""
    conn = connect(str(data_dir / "index.db"))
    migrate(conn, MIGRATIONS[:1])
    fields = list(series_record(plan[0]))
    conn.execute("BEGIN")
    for start in range(0, len(plan), 500):
        series_rows, file_rows = [], []
        for series in plan[start:start + 500]:
            record = series_record(series)
            key = series_key(record, f"{series.folder}/IM00001.dcm")
            series_rows.append((key, *record.values(), series.size))
            file_rows.extend((f"{series.folder}/IM{i:05d}.dcm", PIXEL_BYTES + 4096, 1_700_000_000_000_000_000,
                              key, f"{series.uid}.{i}", i, 1) for i in range(1, series.size + 1))
        conn.executemany(f"INSERT INTO series(series_key, {', '.join(fields)}, file_count) "
                         f"VALUES (?{', ?' * (len(fields) + 1)})", series_rows)
        conn.executemany("INSERT INTO files(path, size, mtime_ns, series_key, SOPInstanceUID, InstanceNumber, "
                         "seen_run) VALUES (?, ?, ?, ?, ?, ?, ?)", file_rows)
    conn.execute("COMMIT")
    conn.close()


def upgrade(data_dir: Path) -> float:
    """Open the index with the current code (migrations run); seconds taken."""
    started = time.perf_counter()
    conn = Catalog(str(data_dir)).open_for_writing()
    elapsed = time.perf_counter() - started
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return elapsed


def sizes(data_dir: Path) -> dict[str, int]:
    """Bytes on disk: the whole file, per table with its indexes, and what search adds."""
    conn = sqlite3.connect(str(data_dir / "index.db"))
    by_table = dict(conn.execute(
        "SELECT coalesce(m.tbl_name, s.name), sum(s.pgsize) FROM dbstat s "
        "LEFT JOIN sqlite_master m ON m.name = s.name GROUP BY 1"))
    search_indexes = conn.execute("SELECT sum(pgsize) FROM dbstat WHERE name IN "
                                  "('series_by_date', 'series_by_modality')").fetchone()[0]
    search_columns = conn.execute("SELECT sum(length(CAST(search_text AS BLOB)) + length(CAST(sort_name AS BLOB))) "
                                  "FROM series").fetchone()[0]
    conn.close()
    return {"file": (data_dir / "index.db").stat().st_size, **by_table,
            "search columns (values)": search_columns, "search indexes": search_indexes}


def percentiles(samples: list[float]) -> tuple[float, float]:
    ms = sorted(s * 1000 for s in samples)
    return statistics.median(ms), ms[min(len(ms) - 1, round(0.95 * len(ms)) - 1)]


def time_handler(data_dir: Path, params: dict, runs: int) -> tuple[list[float], str]:
    app = SimpleNamespace(catalog=Catalog(str(data_dir)))
    raw = {k: v.replace(" ", "+") for k, v in params.items()}  # raw, as Orthanc hands the query over
    samples, total = [], ""
    for i in range(runs + 3):
        started = time.perf_counter()
        answer = router.dispatch(app, Request("GET", "/nas/search", parse_query(raw)))
        if i >= 3:
            samples.append(time.perf_counter() - started)
        assert answer.status == 200, answer.body
        total = answer.headers["X-Total-Count"]
    return samples, total


def time_orthanc(server: OrthancServer, params: dict, runs: int, route: str = "/nas/search") -> list[float]:
    url = f"{server.url}{route}?{urlencode(params)}"
    samples = []
    for i in range(runs + 3):
        started = time.perf_counter()
        answer = server.session.get(url, timeout=30)
        if i >= 3:
            samples.append(time.perf_counter() - started)
        assert answer.status_code == 200, answer.text
    return samples


class BusyWriter:
    """Rewrites series of the index in 256-file transactions, as an indexing run does, until stopped.

    At `files_per_second` (0: as fast as it can, one core busy in Python holding the GIL).
    """

    def __init__(self, data_dir: Path, plan: list[Series], files_per_second: float):
        self.data_dir, self.plan = data_dir, plan
        self.pause = 256 / files_per_second if files_per_second else 0.0
        self.stop = threading.Event()
        self.batches = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        writer = CatalogWriter(Catalog(str(self.data_dir)))
        position = 0
        while not self.stop.is_set():
            batch = []
            while len(batch) < 256:
                series = self.plan[position % len(self.plan)]
                record = series_record(series)
                batch += [(FileEntry(f"{series.folder}/IM{i:05d}.dcm", PIXEL_BYTES + 4096, 1),
                           {**record, "SOPInstanceUID": f"{series.uid}.{i}", "InstanceNumber": i}, None)
                          for i in range(1, series.size + 1)]
                position += 1
            writer.write(batch)
            self.batches += 1
            self.stop.wait(self.pause)
        writer.close()

    def __enter__(self) -> BusyWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--series-size", type=int, default=50)
    parser.add_argument("--runs", type=int, default=200, help="timed runs of each query on each path")
    parser.add_argument("--write-rate", type=float, default=1000,
                        help="files/s the writer commits while searching (indexing's pace here; 0: flat out)")
    parser.add_argument("--keep", help="build the index in this folder and keep it")
    args = parser.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="search-bench-"))
    data_dir = work / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    plan = plan_corpus(args.files, args.series_size)
    print(f"plan: {len(plan)} series, {args.files} files in {time.perf_counter() - started:.1f}s", flush=True)
    try:
        if not (data_dir / "index.db").exists():
            started = time.perf_counter()
            fill(data_dir, plan)
            print(f"filled schema v1 in {time.perf_counter() - started:.1f}s", flush=True)
        print(f"upgrade to v{len(MIGRATIONS)} (fold {len(plan)} series, build indexes): "
              f"{upgrade(data_dir):.2f}s", flush=True)
        on_disk = sizes(data_dir)
        per_million = 1_000_000 / args.files
        print(f"index.db: {on_disk['file'] / 2**20:.0f} MiB, {on_disk['file'] * per_million / 2**20:.0f} MiB "
              f"per million files; " + ", ".join(f"{name} {size / 2**20:.1f} MiB" for name, size in
                                                sorted(on_disk.items()) if name != "file"), flush=True)

        load_before = os.getloadavg()[0]  # other work on the machine shows in the p95s
        an_id = plan[len(plan) // 2].study.patient.patient_id.removeprefix("PAT-")
        queries = [(what, params if params is not None else {"q": an_id[1:6]}) for what, params in QUERIES]
        results = {}
        for what, params in queries:
            samples, total = time_handler(data_dir, params, args.runs)
            results[what] = {"params": params, "total": total, "handler": percentiles(samples)}
        with BusyWriter(data_dir, plan, args.write_rate) as busy:
            started = time.perf_counter()
            for what, params in queries:
                results[what]["writing"] = percentiles(time_handler(data_dir, params, args.runs // 2)[0])
            rate = busy.batches * 256 / (time.perf_counter() - started)
        print(f"(a writer committed {busy.batches} batches of 256 files meanwhile, {rate:.0f} files/s)", flush=True)

        server = OrthancServer(work / "orthanc", nas={"DataDirectory": str(data_dir)}).start()
        try:
            version = server.get("/system").json()["Version"]
            system = percentiles(time_orthanc(server, {}, args.runs, "/system"))
            for what, params in queries:
                results[what]["orthanc"] = percentiles(time_orthanc(server, params, args.runs))
        finally:
            server.stop()

        print(f"\n{len(plan)} series, {args.files} files; {args.runs} runs per query; ms p50 / p95; "
              f"Orthanc {version}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} cores; load average "
              f"{load_before:.1f} before the queries, {os.getloadavg()[0]:.1f} after\n")
        print("| query | parameters | matches | handler | handler while indexing writes | through Orthanc |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for what, r in results.items():
            cells = [f"{r[k][0]:.1f} / {r[k][1]:.1f}" for k in ("handler", "writing", "orthanc")]
            print(f"| {what} | `{urlencode(r['params']) or '(none)'}` | {r['total']} | {' | '.join(cells)} |")
        print(f"\nOrthanc's own GET /system for comparison: {system[0]:.1f} / {system[1]:.1f} ms")
        worst = max(max(r["handler"][1], r["orthanc"][1]) for r in results.values())
        print(f"\nslowest p95: {worst:.1f} ms")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
