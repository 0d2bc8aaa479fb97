"""Jobs of retrieval without Orthanc: the request's checks, jobs.db across a restart, viewer links."""

from __future__ import annotations

import pytest

from orthanc_nas.config import parse_settings
from orthanc_nas.errors import BadRequest, ConfigError, NotSupported
from orthanc_nas.http import Request
from orthanc_nas.jobs import JobStore, parse_retrieve_request
from orthanc_nas.viewers import OrthancSeries, viewer_links

SERIES = OrthancSeries("s-id", "st-id", "1.2.3", "1.2.3.4")


@pytest.mark.parametrize("body, field", [
    ({"series": "abc"}, "series"), ({"series": []}, "series"), ({"series": [""]}, "series"),
    ({"series": ["a"], "to": ""}, "to"), ({"series": ["a"], "to": 4}, "to"), ({"series": ["a"], "x": 1}, "x"),
])
def test_a_bad_retrieve_request_names_its_field(body, field):
    with pytest.raises(BadRequest) as caught:
        parse_retrieve_request(body)
    assert caught.value.field == field


def test_a_retrieve_request_goes_to_orthanc_by_default_without_duplicates():
    assert parse_retrieve_request({"series": ["a", "b", "a"]}) == (["a", "b"], "orthanc")
    assert parse_retrieve_request({"series": ["a"], "to": " ws "}) == (["a"], "ws")


def test_jobs_cut_off_by_a_stop_are_failed_at_the_next_start(tmp_path):
    clock = iter(range(100, 200)).__next__
    store = JobStore(str(tmp_path), clock=clock)
    pending, running, done = (store.create(["k"], "orthanc", 3) for _ in range(3))
    store.update(running, state="running", started_at=150)
    store.update(done, state="done", finished_at=160)
    store.close()
    again = JobStore(str(tmp_path))
    assert again.interrupted() == 2
    states = {job["id"]: job for job in again.list()}
    assert states[pending]["state"] == states[running]["state"] == "failed"
    assert "Orthanc stopped" in states[running]["failure"]["error"]
    assert states[done]["state"] == "done" and "failure" not in states[done]
    assert [job["id"] for job in again.list()] == [done, running, pending]  # newest first
    again.close()


def test_imported_instances_expire_from_their_last_retrieval(tmp_path):
    now = [1000.0]
    store = JobStore(str(tmp_path), clock=lambda: now[0])
    store.imported("j", "i1", "s", "1.1", "md5-1")
    store.imported("j", "i2", "s", "1.2", "md5-2")
    now[0] = 2000.0
    store.retrieved_again(["i2"])
    assert [row["orthanc_id"] for row in store.expired(1500)] == ["i1"]
    store.forget("i1")
    assert store.expired(1500) == [] and len(store.expired(2500)) == 1
    store.close()


def test_viewer_links_only_for_plugins_orthanc_loaded():
    assert viewer_links(["python"], SERIES) == [
        {"name": "Orthanc Explorer", "url": "/app/explorer.html#series?uuid=s-id"}]
    names = [v["name"] for v in viewer_links(["web-viewer", "stone-webviewer", "ohif", "orthanc-explorer-2",
                                               "dicom-web"], SERIES)]
    assert names == ["Orthanc Explorer", "Orthanc Web Viewer", "Stone Web Viewer", "OHIF", "Orthanc Explorer 2"]
    stone = viewer_links(["stone-webviewer"], SERIES)[1]["url"]
    assert stone == "/stone-webviewer/index.html?study=1.2.3&series=1.2.3.4"


@pytest.mark.parametrize("value", [0, -1, True, "24"])
def test_import_retention_hours_must_be_positive_hours_or_null(value):
    with pytest.raises(ConfigError) as caught:
        parse_settings({"ImportRetentionHours": value})
    assert "ImportRetentionHours" in str(caught.value.message)
    assert parse_settings({"ImportRetentionHours": 0.5}).ImportRetentionHours == 0.5
    assert parse_settings({}).ImportRetentionHours is None


def test_the_routes_of_jobs_need_orthanc(tmp_path):
    from orthanc_nas.api import router
    from orthanc_nas.app import NasApp

    app = NasApp(parse_settings({"DataDirectory": str(tmp_path)}))
    try:
        answer = router.dispatch(app, Request("GET", "/nas/jobs"))
        assert answer.status == NotSupported.status
    finally:
        app.close()


def test_opening_a_connection_keeps_the_locks_of_the_others(tmp_path):
    """catalog.connect (make_private) must not open and close the database file itself while this process
    has connections to it: that drops their POSIX locks, and another process closing its connection then
    deletes the WAL this one still writes to (writes lost to every other reader)."""
    import subprocess
    import sys

    from orthanc_nas.catalog import connect

    path = str(tmp_path / "jobs.db")
    first = connect(path)
    first.execute("CREATE TABLE t (x)")
    first.execute("INSERT INTO t VALUES (1)")
    second = connect(path)  # another thread's connection, as a REST request or a store thread opens
    count = f"import sqlite3; c = sqlite3.connect({path!r}); print(c.execute('SELECT count(*) FROM t').fetchone()[0]); c.close()"
    assert subprocess.run([sys.executable, "-c", count], capture_output=True, text=True).stdout.strip() == "1"
    first.execute("INSERT INTO t VALUES (2)")
    assert subprocess.run([sys.executable, "-c", count], capture_output=True, text=True).stdout.strip() == "2"
    first.close()
    second.close()
