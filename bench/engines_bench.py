"""SQLite against PostgreSQL, in the same run: search p50/p95, index size, and indexing files/s.

    python bench/engines_bench.py [--files 1000000] [--series-size 50] [--runs 100] [--index-files 10000]
                                  [--index-rounds 2] [--write-into-index]

A private PostgreSQL 15 cluster is started on a free port (tests/support/postgres.py) and stopped at
the end. Search: the index of `bench/search_bench.py` (the corpus plan, one row per file) is filled
into SQLite, then copied into PostgreSQL by the `migrate` command's code (`moving`); the same queries
then run `--runs` times through `router.dispatch` on each engine (p50/p95 in ms), and each engine's
size is read (SQLite: the file; PostgreSQL: `pg_total_relation_size` of its tables). Indexing: the
benchmark corpus (`bench/corpus.py`, `--index-files` real DICOM files, kept under var/bench/) is indexed
by the core's indexer into a fresh SQLite index and a fresh PostgreSQL database, alternately,
`--index-rounds` times each; files/s of each. Writing alone (what the database costs, without the reads
and parses that share the machine's cores): the corpus's records, parsed once, written by the catalog's
writer in batches of 256 into SQLite and into PostgreSQL, alternately, `--index-rounds` times each;
files/s of each, and the seconds spent in PostgreSQL's statements (`PgConnection._run`: sending,
the server's work, the answer) against the whole write. `--write-into-index`: the corpus's records also
written into the search benchmark's big index on each engine, half of them with the series counted after
every batch (as the indexer's status did before), half without (as now: at most every 2 s).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin"), str(REPO / "bench")]

from tests.support.postgres import PostgresCluster  # noqa: E402

from corpus import plan_corpus  # noqa: E402
from index_bench import corpus  # noqa: E402
from orthanc_nas import store  # noqa: E402
from orthanc_nas.api import router  # noqa: E402
from orthanc_nas.catalog import Catalog  # noqa: E402
from orthanc_nas.catalog_writer import CatalogWriter  # noqa: E402
from orthanc_nas.headers import HEAD_SIZE, read_record  # noqa: E402
from orthanc_nas.http import Request, parse_query  # noqa: E402
from orthanc_nas.indexer import WRITE_BATCH, Indexer  # noqa: E402
from orthanc_nas.moving import copy_data_directory  # noqa: E402
from orthanc_nas.sources.local import LocalSource  # noqa: E402
from orthanc_nas.status import IndexStatus  # noqa: E402
from search_bench import QUERIES, fill, percentiles, upgrade  # noqa: E402


def time_queries(catalog: Catalog, queries: list[tuple[str, dict]], runs: int) -> dict:
    app = SimpleNamespace(catalog=catalog)
    found = {}
    for what, params in queries:
        raw = {k: v.replace(" ", "+") for k, v in params.items()}
        samples, total = [], ""
        for i in range(runs + 3):
            started = time.perf_counter()
            answer = router.dispatch(app, Request("GET", "/nas/search", parse_query(raw)))
            if i >= 3:
                samples.append(time.perf_counter() - started)
            assert answer.status == 200, answer.body
            total = answer.headers["X-Total-Count"]
        p50, p95 = percentiles(samples)
        found[what] = {"p50_ms": round(p50, 2), "p95_ms": round(p95, 2), "total": int(total)}
    return found


def count_ms(catalog: Catalog, runs: int = 5) -> float:
    """Milliseconds of `SELECT count(*) FROM series` (the median of `runs`)."""
    conn, samples = catalog.reader(), []
    for _ in range(runs):
        started = time.perf_counter()
        conn.execute("SELECT count(*) FROM series").fetchone()
        samples.append(time.perf_counter() - started)
    return round(statistics.median(samples) * 1000, 2)


def pg_size(engine: store.PostgresEngine) -> int:
    conn = engine.connect("index")
    return int(conn.execute("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                        "ON n.oid=c.relnamespace WHERE n.nspname=current_schema() AND c.relkind='r'").fetchone()[0])


def index_once(root: Path, catalog: Catalog) -> dict:
    status = IndexStatus(None)
    source = LocalSource(str(root))
    indexer = Indexer(catalog, status, lambda: source, 12)
    started = time.monotonic()
    final = indexer.run()
    seconds = time.monotonic() - started
    source.close()
    assert final["phase"] == "done", final
    return {"files": final["files_processed"], "seconds": round(seconds, 2),
            "files_per_second": round(final["files_processed"] / seconds)}


def corpus_records(root: Path) -> list[tuple]:
    """`(FileEntry, record, None)` of every file of the corpus, parsed once."""
    source = LocalSource(str(root))
    found = []
    for chunk in source.walk(threading.Event(), chunks=True):
        for entry in chunk:
            found.append((entry, read_record(source.read_head, entry.path, HEAD_SIZE), None))
    source.close()
    return found


def write_once(records: list[tuple], catalog: Catalog, count_each_batch: bool = False) -> dict:
    """`records` written in batches as the indexer writes them; `count_each_batch`: the series counted
    after every batch, as the indexer's status did before it counted at most every 2 s."""
    writer = CatalogWriter(catalog)
    writer.begin_run()
    started = time.monotonic()
    for start in range(0, len(records), WRITE_BATCH):
        writer.write(records[start:start + WRITE_BATCH])
        if count_each_batch:
            writer.series_count()
    seconds = time.monotonic() - started
    writer.close()
    return {"files": len(records), "seconds": round(seconds, 2), "files_per_second": round(len(records) / seconds)}


def write_rates(root: Path, pg: PostgresCluster, rounds: int) -> dict:
    """Writing alone on each engine (see the docstring)."""
    records = corpus_records(root)
    rates: dict[str, list] = {"sqlite": [], "postgresql": []}
    run = store.PgConnection._run
    in_statements = [0.0]

    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return run(self, *args, **kwargs)
        finally:
            in_statements[0] += time.perf_counter() - started

    store.PgConnection._run = timed
    try:
        for round_ in range(rounds):
            for name in rates:
                data = Path(tempfile.mkdtemp(prefix="nas-engines-write-"))
                if name == "sqlite":
                    target = store.SqliteEngine(str(data))
                else:
                    target = store.PostgresEngine(pg.create_database(f"write{round_}"))
                in_statements[0] = 0.0
                found = write_once(records, Catalog(str(data), target))
                if name == "postgresql":
                    found["seconds_in_statements"] = round(in_statements[0], 2)
                rates[name].append(found)
                target.close()
    finally:
        store.PgConnection._run = run
    return rates


def mean_rate(runs: list[dict]) -> float:
    return statistics.mean(r["files_per_second"] for r in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--series-size", type=int, default=50)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--index-files", type=int, default=10_000)
    parser.add_argument("--index-rounds", type=int, default=2)
    parser.add_argument("--write-into-index", action="store_true",
                        help="also write the corpus's records into the search index, counting series per batch or not")
    args = parser.parse_args()

    pg = PostgresCluster()
    pg.start()
    report: dict = {"files": args.files, "series_size": args.series_size}
    scratch = tempfile.tempdir = tempfile.mkdtemp(prefix="nas-engines-")  # every folder below, removed at the end
    try:
        # -- search -------------------------------------------------------------------------------------
        plan = plan_corpus(args.files, args.series_size)
        work = Path(tempfile.mkdtemp(prefix="nas-engines-"))
        started = time.monotonic()
        fill(work, plan)
        upgrade(work)
        report["sqlite_fill_seconds"] = round(time.monotonic() - started, 1)
        engine = store.PostgresEngine(pg.create_database("bench"))
        started = time.monotonic()
        copy_data_directory(str(work), engine)
        engine.connect("index").execute("ANALYZE")
        report["postgresql_copy_seconds"] = round(time.monotonic() - started, 1)
        some_id = plan[len(plan) // 2].study.patient.patient_id
        queries = [(w, p if p is not None else {"q": some_id[2:7]}) for w, p in QUERIES]
        report["search"] = {
            "sqlite": time_queries(Catalog(str(work), store.SqliteEngine(str(work))), queries, args.runs),
            "postgresql": time_queries(Catalog(str(work), engine), queries, args.runs),
        }
        report["size_bytes"] = {"sqlite": (work / "index.db").stat().st_size, "postgresql": pg_size(engine)}
        report["series_count_ms"] = {  # what the indexer's status once paid after every batch (now every 2 s)
            "sqlite": count_ms(Catalog(str(work), store.SqliteEngine(str(work)))), "postgresql": count_ms(Catalog(
                str(work), engine))}
        if args.write_into_index:  # new files written into the big index: the series counted per batch or not
            records = corpus_records(corpus(args.index_files))
            report["writing_into_the_index"] = {
                name: {when: write_once(records[half::2], Catalog(str(work), target), count_each_batch=each)
                       for half, (when, each) in enumerate((("count_each_batch", True), ("count_every_2s", False)))}
                for name, target in (("sqlite", store.SqliteEngine(str(work))), ("postgresql", engine))}
        engine.close()

        # -- indexing -----------------------------------------------------------------------------------
        root = corpus(args.index_files)
        rates: dict[str, list] = {"sqlite": [], "postgresql": []}
        for round_ in range(args.index_rounds):
            for name in ("sqlite", "postgresql"):
                data = Path(tempfile.mkdtemp(prefix="nas-engines-index-"))
                if name == "sqlite":
                    target = store.SqliteEngine(str(data))
                else:
                    target = store.PostgresEngine(pg.create_database(f"index{round_}"))
                rates[name].append(index_once(root, Catalog(str(data), target)))
                target.close()
        report["indexing"] = rates
        report["indexing_ratio_postgresql_to_sqlite"] = round(mean_rate(rates["postgresql"])
                                                              / mean_rate(rates["sqlite"]), 2)
        writes = report["writing"] = write_rates(root, pg, args.index_rounds)
        report["writing_ratio_postgresql_to_sqlite"] = round(mean_rate(writes["postgresql"])
                                                             / mean_rate(writes["sqlite"]), 2)
    finally:
        pg.close()
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
