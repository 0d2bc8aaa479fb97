"""The search and series queries, their parameters, the REST routes and the CLI, on a small catalog."""

import json
import sqlite3
from types import SimpleNamespace

import pytest
from tests.support.series import record, write

from orthanc_nas import catalog as catalog_module
from orthanc_nas.api import router
from orthanc_nas.catalog import Catalog, connect, migrate, series_key
from orthanc_nas.catalog_migrations import MIGRATIONS
from orthanc_nas.cli import main as cli
from orthanc_nas.errors import BadRequest, NotFound
from orthanc_nas.http import Request, parse_query
from orthanc_nas.search import ANSWER_FIELDS, SearchParams, search, series_detail

UID = "1.2.826.0.1.3680043.2.1125.9"


@pytest.fixture(autouse=True)
def engine(db_engine):
    """Every test of this module on SQLite and on PostgreSQL (see tests/conftest.py)."""
    return db_engine


def study(n, date, name, pid, desc, **more):
    return dict(PatientName=name, PatientID=pid, StudyInstanceUID=f"{UID}.{n}", StudyDate=date,
                StudyDescription=desc, **more)


DOE_2024 = study(1, "20240301", "DOE^JOHN", "PID-0042", "CT THORAX", PatientSex="M")
DOE_2023 = study(2, "20230115", "DOE^JOHN", "PID-0042", "IRM GENOU")
SERIES = [  # (files, series attributes); several studies for DOE, names in both cases
    (3, dict(DOE_2024, SeriesInstanceUID=f"{UID}.1.1", SeriesNumber=2, SeriesDescription="Axial", Modality="CT")),
    (2, dict(DOE_2024, SeriesInstanceUID=f"{UID}.1.2", SeriesNumber=1, SeriesDescription="Topogram", Modality="CT")),
    (1, dict(DOE_2023, SeriesInstanceUID=f"{UID}.2.1", SeriesNumber=1, SeriesDescription="T1 sag", Modality="MR")),
    (2, dict(study(3, "20240301", "doe^jane", "pid-7", "ct thorax 100%_low"), SeriesInstanceUID=f"{UID}.3.1",
             SeriesNumber=1, SeriesDescription="axial", Modality="CT")),
    (1, dict(study(4, "20220610", "Müller^Hans", "88-1", "Rx Thorax"), SeriesInstanceUID=f"{UID}.4.1",
             SeriesNumber=1, Modality="CR")),
    (2, dict(study(5, "20240302", "García Márquez^José Luis", "ES9", "TC CRÁNEO"), SeriesNumber=4,
             Modality="CT")),  # no SeriesInstanceUID: grouped by study + series number
    (1, dict(study(6, None, "ANON", "X1", None), SeriesInstanceUID=f"{UID}.6.1", Modality="OT")),
]


def file_records():
    files = []
    for index, (count, attrs) in enumerate(SERIES):
        for number in range(count, 0, -1):  # written in reverse instance order
            files.append((f"p{index}/s/{number}.dcm",
                          record(**attrs, SOPInstanceUID=f"{UID}.9.{index}.{number}", InstanceNumber=number)))
    return files


@pytest.fixture
def data_dir(tmp_path):
    write(Catalog(str(tmp_path)), file_records())
    return tmp_path


@pytest.fixture
def conn(data_dir):
    return Catalog(str(data_dir)).reader()


def find(conn, **query):
    result = search(conn, SearchParams.parse({k: str(v) for k, v in query.items()}))
    return result, [(s["PatientName"], s["SeriesDescription"] or s["StudyDescription"]) for s in result.series]


@pytest.mark.parametrize("q, names", [
    ("john doe", {"DOE^JOHN"}),
    ("DOE", {"DOE^JOHN", "doe^jane"}),
    ("jane", {"doe^jane"}),
    ("muller", {"Müller^Hans"}),
    ("MÜLLER hans", {"Müller^Hans"}),
    ("garcia jose", {"García Márquez^José Luis"}),
    ("marquez^luis", {"García Márquez^José Luis"}),
    ("0042", {"DOE^JOHN"}),                       # part of an ID
    ("PID", {"DOE^JOHN", "doe^jane"}),
    ("thorax", {"DOE^JOHN", "doe^jane", "Müller^Hans"}),
    ("craneo", {"García Márquez^José Luis"}),      # study description, accent ignored
    ("topogram doe", {"DOE^JOHN"}),                # series description + name
    ("100%_low", {"doe^jane"}),                    # % and _ are plain characters
    ("100%", {"doe^jane"}),
    ("_", {"doe^jane"}),
    ("john0042", set()),                           # no term spans two fields
    ("doe zzz", set()),
    ("nobody", set()),
])
def test_terms_match_case_and_accent_insensitively(conn, q, names):
    result, rows = find(conn, q=q)
    assert {name for name, _ in rows} == names
    assert result.total == len(rows)


def test_no_query_lists_everything_in_the_spec_order(conn):
    result, rows = find(conn)
    assert result.total == len(SERIES) == len(rows)
    assert rows == [
        ("García Márquez^José Luis", "TC CRÁNEO"),  # 20240302
        ("doe^jane", "axial"),                      # 20240301, names ignoring case: "doe jane" < "doe john"
        ("DOE^JOHN", "Topogram"),                   # series 1
        ("DOE^JOHN", "Axial"),                      # series 2
        ("DOE^JOHN", "T1 sag"),                     # 20230115
        ("Müller^Hans", "Rx Thorax"),               # 20220610
        ("ANON", None),                             # no date: last
    ]


def test_each_series_has_the_spec_fields_and_its_file_count(conn):
    result, _ = find(conn, q="john", date_from="20240101")
    assert [list(s) for s in result.series] == [list(ANSWER_FIELDS)] * 2
    topogram, axial = result.series
    assert (topogram["file_count"], axial["file_count"]) == (2, 3)
    assert axial["SeriesInstanceUID"] == f"{UID}.1.1" and axial["SeriesNumber"] == 2
    assert axial["PatientSex"] == "M" and axial["StudyDate"] == "20240301"
    assert axial["series_key"] == series_key({"SeriesInstanceUID": f"{UID}.1.1"}, "p0/s/1.dcm")


def test_series_without_uid_is_grouped_by_study_and_number(conn):
    result, _ = find(conn, q="garcia")
    (garcia,) = result.series
    assert garcia["SeriesInstanceUID"] is None and garcia["file_count"] == 2
    assert garcia["series_key"] == series_key({"StudyInstanceUID": f"{UID}.5", "SeriesNumber": 4}, "x")


def test_filters_modality_and_dates(conn):
    assert {r for r in find(conn, modality="CT")[1]} == {
        ("DOE^JOHN", "Axial"), ("DOE^JOHN", "Topogram"), ("doe^jane", "axial"),
        ("García Márquez^José Luis", "TC CRÁNEO")}
    assert find(conn, modality="ct")[0].total == 4
    assert find(conn, modality="C")[0].total == 0  # exact, not a prefix
    assert find(conn, date_from="20240301", date_to="20240301")[0].total == 3  # inclusive
    assert find(conn, date_to="20230115")[1] == [("DOE^JOHN", "T1 sag"), ("Müller^Hans", "Rx Thorax")]
    assert find(conn, q="doe", modality="MR", date_from="20230101", date_to="20231231")[1] == [
        ("DOE^JOHN", "T1 sag")]


def test_pages_and_total(conn):
    every = find(conn, limit=1000)[0].series
    pages = [find(conn, limit=3, offset=offset)[0] for offset in (0, 3, 6, 9)]
    assert [p.total for p in pages] == [len(SERIES)] * 4
    assert [s for p in pages for s in p.series] == every
    assert pages[-1].series == []


@pytest.mark.parametrize("query, named", [
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "ten"}, "limit"),
    ({"limit": "-1"}, "limit"), ({"limit": "1e3"}, "limit"), ({"offset": "-5"}, "offset"),
    ({"offset": "x"}, "offset"), ({"offset": "99999999999999999999"}, "offset"),
    ({"date_from": "2024-01-01"}, "date_from"), ({"date_to": "20241301"}, "date_to"),
    ({"date_to": "20240230"}, "date_to"), ({"date_from": "2024"}, "date_from"),
    ({"date_from": "20240201", "date_to": "20240101"}, "date_from"),
    ({"q": " ".join(f"w{i}" for i in range(40))}, "q"),
])
def test_bad_parameters_are_named(query, named):
    with pytest.raises(BadRequest, match=f"parameter {named} "):
        SearchParams.parse(query)


def test_parameter_defaults_and_bounds():
    assert SearchParams.parse({}) == SearchParams(limit=100, offset=0)
    assert SearchParams.parse({"limit": "1000", "offset": "0", "q": "", "modality": " "}) == SearchParams(limit=1000)
    assert SearchParams.parse({"limit": "1"}).limit == 1


def test_series_detail_lists_files_by_instance_number(conn, data_dir):
    key = find(conn, q="axial john")[0].series[0]["series_key"]
    writer_files = [("p0/s/none.dcm", record(**SERIES[0][1], SOPInstanceUID=f"{UID}.9.0.x"))]
    write(Catalog(str(data_dir)), writer_files)  # a file without InstanceNumber comes last
    detail = series_detail(conn, key)
    assert detail["file_count"] == 4 and detail["Modality"] == "CT"
    assert [(f["path"], f["InstanceNumber"]) for f in detail["files"]] == [
        ("p0/s/1.dcm", 1), ("p0/s/2.dcm", 2), ("p0/s/3.dcm", 3), ("p0/s/none.dcm", None)]
    assert detail["files"][0] == {"path": "p0/s/1.dcm", "size": detail["files"][0]["size"],
                                  "SOPInstanceUID": f"{UID}.9.0.1", "InstanceNumber": 1}
    with pytest.raises(NotFound):
        series_detail(conn, "no-such-key")


@pytest.mark.sqlite_only
def test_a_version_1_index_is_upgraded_and_searchable(tmp_path):
    path = str(tmp_path / catalog_module.INDEX_NAME)
    old = connect(path)
    migrate(old, MIGRATIONS[:1])
    old.execute("INSERT INTO series(series_key, PatientName, PatientID, StudyDate, file_count) "
                "VALUES ('k1', 'Ørsted^Hans Christian', 'DK1', '19990101', 1)")
    old.execute("INSERT INTO files(path, size, mtime_ns, series_key, seen_run) VALUES ('a.dcm', 1, 1, 'k1', 0)")
    old.close()
    conn = Catalog(str(tmp_path)).reader()
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert [s["series_key"] for s in find(conn, q="orsted christian")[0].series] == ["k1"]
    assert series_detail(conn, "k1")["files"][0]["path"] == "a.dcm"


def test_migrations_may_be_scripts_or_functions():
    conn = sqlite3.connect(":memory:", isolation_level=None)
    steps = ["CREATE TABLE t(a TEXT); INSERT INTO t VALUES ('x')",
             lambda c: c.execute("UPDATE t SET a = upper(a)")]
    assert migrate(conn, steps) == 2 and migrate(conn, steps) == 2  # the second call does nothing
    assert conn.execute("SELECT a FROM t").fetchall() == [("X",)]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


def test_an_updated_series_gets_new_search_text(data_dir, conn):
    renamed = [("p4/s/1.dcm", record(**dict(SERIES[4][1], PatientName="Meier^Hans"),
                                       SOPInstanceUID="u", InstanceNumber=1))]
    write(Catalog(str(data_dir)), renamed)
    assert find(conn, q="muller")[0].total == 0
    assert find(conn, q="meier")[0].total == 1


# -- through the router, as Orthanc and the WSGI adapter call it -------------------


def dispatch(data_dir, path, query=None):
    app = SimpleNamespace(catalog=Catalog(str(data_dir)))
    return router.dispatch(app, Request("GET", path, parse_query(query)))


def test_route_answers_json_with_total_header(data_dir):
    answer = dispatch(data_dir, "/nas/search", {"q": "j%C3%B3s%C3%A9+GARC%C3%8DA", "limit": "1"})
    assert answer.status == 200 and answer.headers["X-Total-Count"] == "1"
    assert [s["PatientID"] for s in json.loads(answer.body)] == ["ES9"]
    answer = dispatch(data_dir, "/nas/search", {"q": "nobody"})
    assert (answer.status, json.loads(answer.body), answer.headers["X-Total-Count"]) == (200, [], "0")


def test_route_errors(data_dir, tmp_path_factory):
    answer = dispatch(data_dir, "/nas/search", {"limit": "5000"})
    assert answer.status == 400 and "limit" in json.loads(answer.body)["error"]
    answer = dispatch(tmp_path_factory.mktemp("empty"), "/nas/search", {"q": "doe"})
    error = json.loads(answer.body)
    assert answer.status == 404 and error["kind"] == "not_found" and "index" in error["hint"].lower()
    assert dispatch(data_dir, "/nas/series/unknownkey").status == 404


@pytest.mark.parametrize("path", ["/nas/series/ab\0cd", "/nas/series/\ud800", "/nas/patients/PID\0/series",
                                  "/nas/patients/\udcff/series"])
def test_a_path_segment_that_is_not_text_is_a_400_naming_it(data_dir, path):
    answer = dispatch(data_dir, path)
    error = json.loads(answer.body)
    assert answer.status == 400 and "path segment" in error["error"] and error["hint"]


def test_series_route(data_dir, conn):
    key = find(conn, q="muller")[0].series[0]["series_key"]
    answer = dispatch(data_dir, f"/nas/series/{key}")
    body = json.loads(answer.body)
    assert answer.status == 200 and body["series_key"] == key and len(body["files"]) == body["file_count"] == 1


def test_cli_prints_a_table(data_dir, capsys):
    assert cli(["search", "john", "doe", "--data", str(data_dir)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["Date", "Patient", "ID", "Study", "Series", "Mod", "Files", "Key"]
    assert out[1].startswith("2024-03-01  DOE JOHN") and "Topogram" in out[1]
    assert out[-1] == "1–3 of 3 series"
    assert cli(["search", "--data", str(data_dir), "--limit", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1–2 of 7 series (--offset shows more)"
    assert cli(["search", "muller", "--data", str(data_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["PatientName"] == "Müller^Hans"


def test_cli_errors(tmp_path, capsys):
    assert cli(["search", "doe", "--data", str(tmp_path)]) == 2
    assert "Run indexing first" in capsys.readouterr().err
    assert cli(["search", "--data", str(tmp_path), "--from", "2024"]) == 2
    assert "date_from" in capsys.readouterr().err
