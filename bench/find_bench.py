"""C-FIND's SQL on both engines: the node's handler (parse, SQL, every answer dataset) timed in-process.

    python bench/find_bench.py [--files 1000000] [--series-size 50] [--runs 200] [--load 0] [--skip-postgresql]

The search benchmark's index (`--files` files in series of `--series-size`, `bench/search_bench.py`'s
`fill` and upgrade) in SQLite, copied into a private PostgreSQL cluster (tests/support/postgres.py) by
the `migrate` command's code and ANALYZEd. The STUDY and SERIES queries of `bench/dicom_bench.py` run
`--runs` times each on each engine, with `ModalitiesInStudy` matched both ways in the same process, run
by run in turn: `IN` (`s.StudyInstanceUID IN (SELECT … WHERE m.Modality IN …)`: the previous form, and
PostgreSQL's) and `EXISTS` (a correlated subquery: SQLite's now; see `store_dialects.Dialect.modalities_in_study`).
Statements run as the plugin runs them (psycopg prepares one run 5 times on a connection). `--load N` keeps N busy processes running meanwhile (a loaded machine).
Prints p50/p95 in ms and the query plans of the date range + ModalitiesInStudy query (SQLite's EXPLAIN
QUERY PLAN, PostgreSQL's EXPLAIN ANALYZE).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin"), str(REPO / "bench")]

from pydicom.dataset import Dataset  # noqa: E402

from corpus import plan_corpus  # noqa: E402
from orthanc_nas import store, store_dialects  # noqa: E402
from orthanc_nas.catalog import Catalog  # noqa: E402
from orthanc_nas.dicom.query import answer, parse, rows, sql  # noqa: E402
from orthanc_nas.moving import copy_data_directory  # noqa: E402
from search_bench import fill, percentiles, upgrade  # noqa: E402

#: the forms of ModalitiesInStudy: the previous one on both engines, the one SQLite now has
FORMS = {"IN": store_dialects.PgDialect.modalities_in_study, "EXISTS": store_dialects.Dialect.modalities_in_study}


def identifier(level: str, keys: dict) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    setattr(ds, "StudyInstanceUID" if level == "STUDY" else "SeriesInstanceUID", "")
    ds.PatientName = ""
    setattr(ds, "NumberOfStudyRelatedInstances" if level == "STUDY" else "NumberOfSeriesRelatedInstances", "")
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def time_forms(conn, ds: Dataset, forms: list[str], runs: int) -> tuple[dict[str, tuple[float, float]], int]:
    """p50/p95 (ms) of the handler with each form of ModalitiesInStudy, the forms taking turns run by run
    (so a change of the machine's load falls on both); the number of answers."""
    samples: dict[str, list[float]] = {form: [] for form in forms}
    count = 0
    for i in range(runs + 3):
        for form in forms:
            store_dialects.dialect(conn).modalities_in_study = FORMS[form]
            started = time.perf_counter()
            query = parse(ds, patient_root=False)
            count = len([answer(query, row, "NAS") for row in rows(conn, query)])
            if i >= 3:
                samples[form].append(time.perf_counter() - started)
    del store_dialects.dialect(conn).modalities_in_study  # the class's own again
    return {form: percentiles(found) for form, found in samples.items()}, count


def plans(conn, ds: Dataset) -> list[str]:
    text, args = sql(parse(ds, patient_root=False), store_dialects.dialect(conn))
    if store_dialects.dialect(conn) is store_dialects.SQLITE_DIALECT:
        return [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + text, args)]
    return [r[0] for r in conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + text, args)]


def burn(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--series-size", type=int, default=50)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--load", type=int, default=0)
    parser.add_argument("--skip-postgresql", action="store_true")
    args = parser.parse_args()

    plan = plan_corpus(args.files, args.series_size)
    work = Path(tempfile.mkdtemp(prefix="nas-find-bench-"))
    fill(work, plan)
    upgrade(work)
    some = plan[len(plan) // 3]
    name = some.study.patient.name.split("^")[0][:4]
    queries = [
        ("STUDY", "name prefix", {"PatientName": f"{name}*"}),
        ("STUDY", "date range + modality", {"StudyDate": "20230101-20230115", "ModalitiesInStudy": "CT"}),
        ("STUDY", "name prefix + modality", {"PatientName": f"{name}*", "ModalitiesInStudy": "CT"}),
        ("STUDY", "modality alone", {"ModalitiesInStudy": "CT"}),  # 3,466 answers: a tenth of the runs
        ("STUDY", "one study UID", {"StudyInstanceUID": some.study.uid}),
        ("STUDY", "patient ID", {"PatientID": some.study.patient.patient_id}),
        ("SERIES", "series of a study", {"StudyInstanceUID": some.study.uid}),
    ]
    engines = {"sqlite": store.SqliteEngine(str(work))}
    cluster = None
    if not args.skip_postgresql:
        from tests.support.postgres import PostgresCluster

        cluster = PostgresCluster()
        cluster.start()
        engines["postgresql"] = store.PostgresEngine(cluster.create_database("find"))
        copy_data_directory(str(work), engines["postgresql"])
        engines["postgresql"].connect("index").execute("ANALYZE")
    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=burn, args=(stop,), daemon=True) for _ in range(args.load)]
    for p in burners:
        p.start()
    try:
        print(f"{args.files} files / {len(plan)} series; {args.runs} runs per query; {args.load} busy processes; "
              f"load average {os.getloadavg()[0]:.1f}")
        for engine_name, engine in engines.items():
            conn = Catalog(str(work), engine).reader()
            for level, what, keys in queries:
                ds = identifier(level, keys)
                timed, count = time_forms(conn, ds, list(FORMS) if "ModalitiesInStudy" in keys else ["EXISTS"],
                                          args.runs // 10 if what == "modality alone" else args.runs)
                figures = [f"{form if 'ModalitiesInStudy' in keys else ''} p50 {p50:6.1f} ms  p95 {p95:6.1f} ms"
                           for form, (p50, p95) in timed.items()]
                print(f"  {engine_name:10s} {level:6s} {what:24s} {count:5d} answers  {';  '.join(figures)}")
            ds = identifier("STUDY", queries[1][2])
            for form in FORMS:
                store_dialects.dialect(conn).modalities_in_study = FORMS[form]
                print(f"  {engine_name} plan of the date range + modality, {form}:")
                for step in plans(conn, ds):
                    print(f"    {step}")
            del store_dialects.dialect(conn).modalities_in_study
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        stop.set()
        for p in burners:
            p.join()
        for engine in engines.values():
            engine.close()
        if cluster is not None:
            cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
