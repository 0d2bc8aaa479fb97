"""`search()` against a brute-force oracle (tests/support/search_oracle.py) on a catalog of hostile text, on
both engines and both ways of reading a page; the narrow table `series_text` and its index kept in step with
`series` through updates, removals and re-adds; hostile requests through the router; an index moved into
PostgreSQL by `migrate` answering like its SQLite source."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace

import psycopg
import pytest
from tests.support.search_oracle import catalog_series, files_of, oracle, queries, stored_series
from tests.support.series import write

from orthanc_nas import search as search_module
from orthanc_nas import store
from orthanc_nas.api import router
from orthanc_nas.catalog import SERIES_FIELDS, Catalog, migrate, transaction
from orthanc_nas.catalog_migrations import MIGRATIONS, search_columns
from orthanc_nas.catalog_writer import CatalogWriter
from orthanc_nas.cli import main as cli
from orthanc_nas.http import Request, parse_query
from orthanc_nas.search import MAX_TERMS, SearchParams, search
from orthanc_nas.store_dialects import PG_DIALECT, PgDialect

SERIES = catalog_series()
FILES = files_of(SERIES)
STORED = stored_series(FILES)
QUERIES = queries(STORED)


@pytest.fixture
def data_dir(tmp_path, db_engine):
    write(Catalog(str(tmp_path)), FILES)
    return tmp_path


def answers(conn, series, query_list) -> list[str]:
    """The queries whose answer differs from the oracle's, each with both answers (empty: all agree)."""
    wrong = []
    for query in query_list:
        params = SearchParams.parse(query)
        result = search(conn, params)
        got = (result.total, [s["series_key"] for s in result.series])
        want = oracle(series, params)
        if got != want:
            wrong.append(f"{query!r}: search {got[0]} {got[1][:5]}…, oracle {want[0]} {want[1][:5]}…")
    return wrong


def both_page_ways(monkeypatch, conn, series, query_list) -> None:
    """Every query agrees with the oracle when the page is read in the answer's order (dense) and through
    the trigram index (sparse); on PostgreSQL also when `search`, not the planner, makes that choice."""
    engine = conn.dialect.name if hasattr(conn, "dialect") else "sqlite"
    assert answers(conn, series, query_list) == []
    if engine == "postgresql":
        monkeypatch.setattr(PgDialect, "plans_by_statistics", False)
    for dense in (True, False):
        monkeypatch.setattr(search_module, "_dense", lambda *args, dense=dense: dense)
        assert answers(conn, series, query_list) == [], f"page read {'densely' if dense else 'sparsely'}"
    monkeypatch.undo()


def test_the_catalog_is_hostile_enough():
    """The drawn catalog holds what it claims: every fragment and every query length, matches and misses."""
    texts = "\n".join(str(attrs.get(f)) for attrs in SERIES for f in ("PatientName", "StudyDescription"))
    assert all(c in texts for c in '"*^:()-+%_\\😀山ßς\u0308')
    totals = [oracle(STORED, SearchParams.parse(q))[0] for q in QUERIES]
    assert sum(t == 0 for t in totals) > 10 and sum(t > 20 for t in totals) > 10
    lengths = {len(t) for q in QUERIES for t in SearchParams.parse(q).terms}
    assert {1, 2, 3, 4} <= lengths and max(lengths) > 100


def test_search_agrees_with_the_oracle(data_dir, monkeypatch):
    both_page_ways(monkeypatch, Catalog(str(data_dir)).reader(), STORED, QUERIES)


def test_full_rows_and_pages(data_dir):
    conn = Catalog(str(data_dir)).reader()
    every = search(conn, SearchParams.parse({"limit": "1000"}))
    assert every.total == len(STORED) and [s["file_count"] for s in every.series] == [2] * len(STORED)
    for row in every.series:
        assert {f: row[f] for f in ("PatientName", "StudyDescription", "SeriesDescription")} == {
            f: STORED[row["series_key"]][f] for f in ("PatientName", "StudyDescription", "SeriesDescription")}
    pages = [search(conn, SearchParams.parse({"limit": "7", "offset": str(o)})).series for o in range(0, 301, 7)]
    assert [s for page in pages for s in page] == every.series


def text_tables_agree(conn) -> None:
    """`series_text` holds `series`' (series_key, search_text), no more; SQLite's FTS5 index is sound."""
    def rows(sql):
        return sorted(tuple(row) for row in conn.execute(sql).fetchall())

    assert rows("SELECT series_key, search_text FROM series_text") == rows("SELECT series_key, search_text FROM series")
    if not hasattr(conn, "dialect"):
        conn.execute("INSERT INTO series_words(series_words) VALUES ('integrity-check')")
        conn.execute("INSERT INTO series_words(series_words, rank) VALUES ('integrity-check', 1)")


def test_updates_removals_and_readds_keep_series_text_in_step(data_dir, monkeypatch):
    catalog = Catalog(str(data_dir))
    conn = catalog.reader()
    text_tables_agree(conn)
    # run 1: a third re-written with other descriptions (one with the text it had), a third not seen
    renamed = [dict(attrs, SeriesDescription=f"renamed {n} NEAR(x) 100%", PatientName=attrs["StudyDescription"])
               for n, attrs in enumerate(SERIES)]
    renamed_files, files = files_of(renamed), []
    for n in range(len(SERIES)):
        if n % 3 == 0:
            files += renamed_files[2 * n:2 * n + 2]
        elif n % 3 == 1:
            files += FILES[2 * n:2 * n + 2]
    writer = CatalogWriter(catalog)
    writer.begin_run()
    write(catalog, files, writer)
    writer.remove_unseen()
    writer.finish_run("done")
    state = stored_series(files)
    assert catalog.counts()["series"] == len(state)
    text_tables_agree(conn)
    both_page_ways(monkeypatch, conn, state, QUERIES[:60])
    # run 2: the removed ones back under their old text, the renamed ones back too, a file moved to another series
    moved = [(FILES[2][0], dict(FILES[2][1], SeriesInstanceUID=f"{SERIES[5]['SeriesInstanceUID']}"))]
    writer.begin_run()
    write(catalog, FILES + moved, writer)
    writer.remove_unseen()
    writer.finish_run("done")
    text_tables_agree(conn)
    state = stored_series(FILES + moved)
    assert catalog.counts()["series"] == len(state)
    assert answers(conn, state, QUERIES[60:]) == []
    # every file gone: both tables empty
    writer.begin_run()
    writer.remove_unseen()
    writer.close()
    text_tables_agree(conn)
    assert conn.execute("SELECT count(*) FROM series_text").fetchone()[0] == 0
    assert search(conn, SearchParams.parse({"q": "thorax"})).total == 0



def test_an_index_made_before_migration_9_is_searchable_once_opened(tmp_path, db_engine, monkeypatch):
    """Series written at schema 8 (no `series_text`): opening the index fills it and its trigram index."""
    conn = store.default_engine(str(tmp_path)).connect("index")
    migrate(conn, MIGRATIONS[:8])
    columns = ("series_key", *SERIES_FIELDS, "search_text", "sort_name", "file_count")
    with transaction(conn):
        conn.executemany(f"INSERT INTO series({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                         [(key, *(attrs.get(f) for f in SERIES_FIELDS), *search_columns(attrs), 2)
                          for key, attrs in STORED.items()])
    conn.close()
    reader = Catalog(str(tmp_path)).reader()
    assert store.schema_version(reader, "index") == len(MIGRATIONS)
    text_tables_agree(reader)
    both_page_ways(monkeypatch, reader, STORED, QUERIES)

# -- hostile requests through the router --------------------------------------------------------


def dispatch(data_dir, query):
    app = SimpleNamespace(catalog=Catalog(str(data_dir)))
    return router.dispatch(app, Request("GET", "/nas/search", parse_query(query)))


LONG = [f"{n:03d}" + "ab" * 498 + "c" for n in range(MAX_TERMS)]  # 1,000 characters each


@pytest.mark.parametrize("query, named", [
    ({"q": "ab\0cd"}, "q"), ({"q": "\0"}, "q"), ({"q": "doe\0"}, "q"), ({"q": "x %00 y"}, "q"),
    ({"q": "\ud800"}, "q"), ({"q": "ab\udcffcd"}, "q"), ({"q": "ok \udfff"}, "q"),
    ({"modality": "CT\0"}, "modality"), ({"modality": "\ud800"}, "modality"),
    ({"q": "thorax", "modality": "\0"}, "modality"), ({"date_from": "2024\0101"}, "date_from"),
    ({"limit": "1\0"}, "limit"), ({"offset": "\ud800"}, "offset"),
    ({"q": " ".join(LONG)}, None), ({"q": " ".join(LONG + ["xyz"])}, "q"),
    ({"q": '"'}, None), ({"q": '""'}, None), ({"q": '"""'}, None), ({"q": '" "" """ """"'}, None),
    ({"q": '"thorax"'}, None), ({"q": "'''"}, None), ({"q": '"*'}, None), ({"q": "NEAR( * ^"}, None),
    ({"q": "%%"}, None), ({"q": "\\"}, None), ({"q": "x\\%_"}, None),
])
def test_hostile_requests_get_the_answer_or_a_400_naming_the_parameter(data_dir, query, named):
    answer = dispatch(data_dir, query)
    body = json.loads(answer.body)
    if named is None:
        params = SearchParams.parse(parse_query(query))
        total, keys = oracle(STORED, params)
        assert answer.status == 200, body
        assert (int(answer.headers["X-Total-Count"]), [s["series_key"] for s in body]) == (total, keys)
    else:
        assert answer.status == 400 and f"parameter {named} " in body["error"], body


def test_a_long_term_finds_its_series(data_dir):
    catalog = Catalog(str(data_dir))
    value = "".join(LONG)
    write(catalog, [("long/1.dcm", files_of([dict(SERIES[0], SeriesInstanceUID="9.9", SeriesDescription=value)])[0][1])])
    answer = dispatch(data_dir, {"q": " ".join(LONG)})
    assert answer.status == 200 and answer.headers["X-Total-Count"] == "1"
    assert json.loads(answer.body)[0]["SeriesInstanceUID"] == "9.9"


# -- an index moved into PostgreSQL -------------------------------------------------------------


def test_an_index_moved_by_migrate_answers_like_its_source(tmp_path, pg_database, capsys):
    write(Catalog(str(tmp_path), store.SqliteEngine(str(tmp_path))), FILES)
    source = Catalog(str(tmp_path), store.SqliteEngine(str(tmp_path))).reader()
    source.execute("PRAGMA user_version = 9")  # as the version that brought `series_text` left it
    assert cli(["migrate", "--from", str(tmp_path), "--to", pg_database]) == 0
    capsys.readouterr()
    engine = store.PostgresEngine(pg_database)
    try:
        moved = Catalog(str(tmp_path / "elsewhere"), engine).reader()
        text_tables_agree(moved)
        for query in QUERIES:
            params = SearchParams.parse(query)
            there, here = search(moved, params), search(source, params)
            assert (there.total, there.series) == (here.total, here.series), query
        assert answers(moved, STORED, QUERIES) == []
        # the moved index goes on being written: the triggers came with the schema
        write(Catalog(str(tmp_path / "elsewhere"), engine), files_of([dict(SERIES[1], SeriesInstanceUID="8.8",
                                                                            SeriesDescription="brand new")]))
        text_tables_agree(moved)
        assert search(moved, SearchParams.parse({"q": "brand new"})).total == 1
    finally:
        engine.close()



@pytest.fixture
def pg_locale_database(postgres):
    """A database collating by a language's rules (en_US), as `CREATE DATABASE` makes it on most servers."""
    name = f"nas_test_{os.getpid()}_en_us"
    with psycopg.connect(postgres.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 LC_COLLATE 'en_US.utf8' LC_CTYPE 'en_US.utf8'")
    yield postgres.url(name)
    postgres.drop_database(name)


def test_a_database_collating_by_locale_orders_like_sqlite(tmp_path, pg_locale_database):
    """en_US skips punctuation and spaces (`a-b` between `ab` and `ac`): names and keys still go by code points,
    and `series_by_date` still gives that order without a sort."""
    engine = store.PostgresEngine(pg_locale_database)
    try:
        catalog = Catalog(str(tmp_path), engine)
        write(catalog, FILES)
        conn = catalog.reader()
        assert answers(conn, STORED, QUERIES) == []
        conn.execute("BEGIN")
        try:
            conn.execute("SET LOCAL enable_sort = off")
            plan = " | ".join(row[0] for row in conn.execute(
                f"EXPLAIN SELECT series_key FROM series ORDER BY {search_module._order(PG_DIALECT)} LIMIT 100"))
        finally:
            conn.execute("ROLLBACK")
        assert "series_by_date" in plan and "Sort" not in plan, plan
    finally:
        engine.close()
