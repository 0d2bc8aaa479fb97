"""`GET /nas/dicom/retrievals`: the DICOM node's audit through the REST API, on both engines."""

from __future__ import annotations

import json

import pytest

from orthanc_nas.api import router
from orthanc_nas.app import NasApp
from orthanc_nas.config import parse_settings
from orthanc_nas.dicom.audit import Retrieval, RetrievalAudit
from orthanc_nas.http import Request, parse_query


@pytest.fixture(params=["sqlite", "postgresql"])
def app(request, tmp_path):
    database = {}
    if request.param == "postgresql":
        database = {"Database": {"Type": "postgresql", "Url": request.getfixturevalue("pg_database")}}
    app = NasApp(parse_settings({"DataDirectory": str(tmp_path / "data"), **database}))
    yield app
    app.close()


def get(app, query: str = ""):
    answer = router.dispatch(app, Request("GET", "/nas/dicom/retrievals", parse_query(dict(
        part.split("=", 1) for part in query.split("&") if part))))
    return answer.status, json.loads(answer.body)


def test_no_node_ever_ran_an_empty_list(app):
    assert get(app) == (200, [])


def test_the_retrievals_newest_first_with_what_was_sent_and_failed(app):
    audit = RetrievalAudit(app.settings.DataDirectory, app.engine)  # as the node writes it
    for n in range(3):
        record = Retrieval("WS1", "127.0.0.1", "C-MOVE" if n else "C-GET", "PACS" if n else None, "STUDY",
                           {"StudyInstanceUID": f"1.2.{n}"}, files=5, sent=5 - n, failed=n,
                           outcome="done" if n == 0 else "done_with_failures", started_at=1_700_000_000 + n)
        if n:
            record.fail("the destination refused 1.2.3")
        audit.record(record)
    audit.close()
    status, found = get(app)
    assert status == 200 and [r["keys"]["StudyInstanceUID"] for r in found] == ["1.2.2", "1.2.1", "1.2.0"]
    newest = found[0]
    assert (newest["caller_aet"], newest["caller_address"], newest["operation"], newest["destination"]) == \
        ("WS1", "127.0.0.1", "C-MOVE", "PACS")
    assert (newest["files"], newest["sent"], newest["failed"], newest["outcome"]) == (5, 3, 2, "done_with_failures")
    assert newest["detail"] == "the destination refused 1.2.3" and newest["level"] == "STUDY"
    assert newest["started_at"] == "2023-11-14T22:13:22Z" and newest["finished_at"].endswith("Z")
    assert [r["keys"]["StudyInstanceUID"] for r in get(app, "limit=2")[1]] == ["1.2.2", "1.2.1"]


@pytest.mark.parametrize("query, field", [("limit=0", "limit"), ("limit=1001", "limit"), ("limit=abc", "limit"),
                                          ("limit=-1", "limit"), ("limt=5", "limt")])
def test_bad_parameters_are_refused_naming_them(app, query, field):
    status, body = get(app, query)
    assert status == 400 and field in body["error"] and body["field"] == field, body


def test_retrievals_finished_while_the_database_is_down_are_written_once_it_answers(tmp_path):
    """The audit's database lost (`DatabaseUnavailable`): each row waits in memory, in order, and is written
    before the next retrieval or by the next read; none twice."""
    from orthanc_nas.store import DatabaseUnavailable, SqliteEngine

    class Flaky(SqliteEngine):
        down = False

        def connect(self, part):
            conn = super().connect(part)
            engine = self

            class Conn:  # the connection, failing while the engine is down
                def __getattr__(self, name):
                    return getattr(conn, name)

                def __setattr__(self, name, value):
                    setattr(conn, name, value)

                def execute(self, *args):
                    if engine.down:
                        raise DatabaseUnavailable("the NAS index's database cannot be reached")
                    return conn.execute(*args)

            return Conn()

    engine = Flaky(str(tmp_path))
    audit = RetrievalAudit(str(tmp_path), engine)
    audit.record(Retrieval("WS1", "127.0.0.1", "C-MOVE", "WS1", "STUDY", {}, outcome="done"))
    engine.down = True
    for operation in ("C-GET", "C-MOVE"):
        with pytest.raises(DatabaseUnavailable):
            audit.record(Retrieval("WS1", "127.0.0.1", operation, None, None, {}, outcome="failed"))
    with pytest.raises(DatabaseUnavailable):
        audit.latest()
    engine.down = False
    with pytest.raises(DatabaseUnavailable):  # the retrieval found the database down: not tried again
        audit.record(Retrieval("WS1", "127.0.0.1", "C-GET", None, None, {}, outcome="failed", keep_back=True))
    assert [(r["id"], r["operation"], r["outcome"]) for r in audit.latest()] == [
        (4, "C-GET", "failed"), (3, "C-MOVE", "failed"), (2, "C-GET", "failed"), (1, "C-MOVE", "done")]
    assert audit.record(Retrieval("WS1", "127.0.0.1", "C-GET", "WS1", "STUDY", {}, outcome="done")) == 5
    assert audit.totals()[0] == 5
    audit.close()
