"""Jobs of retrieval without Orthanc: the request's checks, the job store across a restart and across nodes
(on both engines: `db_engine`), viewer links."""

from __future__ import annotations

import pytest

from orthanc_nas.config import parse_settings
from orthanc_nas.errors import BadRequest, ConfigError, NotFound, NotSupported
from orthanc_nas.http import Request
from orthanc_nas.jobs import LEASE, JobStore, JobWatch, parse_retrieve_request
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


def test_jobs_cut_off_by_a_stop_are_failed_at_the_next_start(tmp_path, db_engine):
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


def test_a_live_jobs_progress_read_before_its_end_never_lands_over_its_final_counts(tmp_path, db_engine):
    store = JobStore(str(tmp_path))
    job = store.create(["k"], "orthanc", 240)
    assert store.start(job)
    store.save_progress(job, files_done=22)
    seen_live = {"files_done": 23}  # what a request read of the running job, an instant before its last store
    store.update(job, state="cancelled", finished_at=1.0, files_done=24)  # the job's own end, all stores counted
    store.save_progress(job, **seen_live)  # the request's save lands afterwards
    final = store.describe(job)
    assert (final["state"], final["files_done"]) == ("cancelled", 24)
    store.close()


def test_imported_instances_expire_from_their_last_retrieval(tmp_path, db_engine):
    now = [1000.0]
    store = JobStore(str(tmp_path), clock=lambda: now[0])
    store.imported("j", "i1", "s", "1.1", "md5-1")
    store.imported("j", "i2", "s", "1.2", "md5-2")
    now[0] = 2000.0
    store.retrieved_again(["i2"])
    assert [row["orthanc_id"] for row in store.expired(1500)] == ["i1"]
    store.forget("i1")
    assert store.expired(1500) == [] and len(store.expired(2500)) == 1
    store.imported("j2", "i2", "s", "1.2", "md5-2b")  # stored again (deleted from Orthanc meanwhile)
    assert [(r["orthanc_id"], r["md5"], r["job_id"]) for r in store.expired(2500)] == [("i2", "md5-2b", "j2")]
    store.close()


def two_nodes(tmp_path, clock=None):
    """The job stores of nodes A and B on one database (on SQLite: one DataDirectory's files)."""
    kw = {"clock": clock} if clock else {}
    a = JobStore(str(tmp_path), node="host-a:1", **kw)
    b = JobStore(str(tmp_path), node="host-b:2", engine=a.engine, **kw)
    return a, b


def test_any_node_lists_and_cancels_the_jobs_of_another(tmp_path, db_engine):
    a, b = two_nodes(tmp_path)
    running, pending = a.create(["k1"], "orthanc", 4), a.create(["k2"], "ws", 2)
    assert a.start(running)
    listed = {job["id"]: job for job in b.list()}
    assert set(listed) == {running, pending} and {job["node"] for job in listed.values()} == {"host-a:1"}
    assert listed[running]["state"] == "running" and listed[pending]["state"] == "pending"

    b.request_cancel(pending)  # pending: cancelled at once, and node A never starts it
    assert b.describe(pending)["state"] == "cancelled" and not a.start(pending)
    assert a.cancels_asked() == [] and b.cancels_asked() == []
    b.request_cancel(running)  # running: node A reads it and stops the job itself
    assert a.describe(running)["state"] == "running"
    assert a.cancels_asked() == [running] and b.cancels_asked() == []
    a.update(running, state="cancelled", finished_at=1.0)
    assert a.cancels_asked() == []
    b.request_cancel(running)  # an ended job stays as it ended
    assert a.describe(running)["state"] == "cancelled"
    with pytest.raises(NotFound):
        b.describe("nope")
    a.close()
    b.close()


def test_a_node_that_starts_fails_only_its_own_jobs_and_those_of_gone_nodes(tmp_path, db_engine):
    now = [1000.0]
    a, b = two_nodes(tmp_path, clock=lambda: now[0])
    if not a.engine.shared:
        pytest.skip("one node owns SQLite's files: every live job at start is its own (see above)")
    mine, theirs = b.create(["k"], "orthanc", 1), a.create(["k"], "orthanc", 1)
    lost = a.create(["k"], "orthanc", 1)  # a row of A that A's threads do not run (A could not mark it)
    assert a.start(theirs)
    now[0] += LEASE - 1
    b.close()
    b = JobStore(str(tmp_path), node="host-b:2", engine=a.engine, clock=lambda: now[0])  # B restarted
    assert b.interrupted() == 1
    assert b.describe(mine)["state"] == "failed" and "Orthanc stopped" in b.describe(mine)["failure"]["error"]
    assert b.describe(theirs)["state"] == "running"  # A beats within its lease: its job goes on
    a.beat([theirs])  # A beats the jobs it runs, not the others
    now[0] += LEASE - 1
    assert b.orphaned() == 1 and b.describe(lost)["state"] == "failed"
    assert b.describe(theirs)["state"] == "running"
    now[0] += 2  # A stopped beating (killed): any node ends its jobs
    assert b.orphaned() == 1
    gone = b.describe(theirs)
    assert gone["state"] == "failed" and "stopped answering" in gone["failure"]["error"]
    a.close()
    b.close()


def test_the_watch_of_a_node_cancels_its_jobs_cancelled_elsewhere_and_beats(tmp_path, db_engine, monkeypatch):
    import threading
    import time

    from orthanc_nas import jobs

    monkeypatch.setattr(jobs, "WATCH", 0.05)
    monkeypatch.setattr(jobs, "BEAT", 0.0)
    a, b = two_nodes(tmp_path)
    job = a.create(["k"], "orthanc", 1)
    assert a.start(job)
    cancelled, live = threading.Event(), [job]
    watch = JobWatch(a, lambda: live, lambda job_id: job_id == job and cancelled.set()).start()
    try:
        before = b.list()[0]
        b.request_cancel(job)
        assert cancelled.wait(10), "node A did not see the cancellation asked on node B"
        deadline = time.monotonic() + 10
        while a._conn().execute("SELECT heartbeat FROM jobs WHERE id=?", (job,)).fetchone()[0] == \
                a._conn().execute("SELECT created_at FROM jobs WHERE id=?", (job,)).fetchone()[0]:
            assert time.monotonic() < deadline, "node A did not beat"
            time.sleep(0.05)
        assert before["state"] == "running"
    finally:
        watch.stop()
        a.close()
        b.close()


@pytest.mark.sqlite_only
def test_a_jobs_db_of_an_older_version_keeps_its_rows(tmp_path, db_engine):
    from orthanc_nas import jobs
    from orthanc_nas.catalog import connect, migrate

    old = connect(str(tmp_path / "jobs.db"))
    migrate(old, jobs.MIGRATIONS[:1], "jobs")  # jobs.db as the version before nodes made it
    old.execute("INSERT INTO jobs(id, state, destination, series, created_at, files_total, files_done) "
                "VALUES ('done1', 'done', 'orthanc', '[\"k\"]', 1, 3, 3), "
                "('live1', 'running', 'orthanc', '[\"k\"]', 2, 3, 1)")
    old.execute("INSERT INTO imported VALUES ('i1', 's', '1.1', 'md5', 'done1', 1, 1)")
    old.close()
    store = JobStore(str(tmp_path))
    assert store.interrupted() == 1
    assert {(job["id"], job["state"], job["node"]) for job in store.list()} == {
        ("done1", "done", None), ("live1", "failed", None)}
    assert [row["orthanc_id"] for row in store.expired(2)] == ["i1"]
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
