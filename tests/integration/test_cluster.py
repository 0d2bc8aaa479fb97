"""Several Orthanc nodes on one PostgreSQL index (SPEC "Several Orthanc nodes"): two real Orthanc processes,
each with the plugin, on a private PostgreSQL cluster (tests/support/postgres.py)."""

from __future__ import annotations

import io
import json
import os
import shutil
import time
import zipfile

import pytest
import requests
from tests.support.dicom import write_series
from tests.support.orthanc import free_port
from tests.support.smbd import SambaServer, make_share_dir

pytestmark = pytest.mark.integration

SLOW = {"Hours": "00:00-23:59", "MaxFilesPerSecond": 15}  # a run that lasts long enough to be watched


@pytest.fixture(scope="module")
def nas(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-nas")
    for n in range(6):
        write_series(root / f"P{n}" / "CT", 40, PatientName=f"CLUSTER^P{n}", PatientID=f"C{n}", Modality="CT")
    return root


@pytest.fixture(scope="module")
def archive_nas(tmp_path_factory):
    """A NAS that keeps everything in one folder at its top."""
    root = tmp_path_factory.mktemp("cluster-archive")
    for n in range(6):
        write_series(root / "archive" / f"P{n}" / "CT", 40, PatientName=f"ARCHIVE^P{n}", PatientID=f"A{n}",
                     Modality="CT")
    return root


def start_node(orthanc_factory, tmp_path, name: str, nas, url: str, extra: dict | None = None, **more):
    """A node on `url` indexing `nas`: a local folder, or a `Connection` of its own (e.g. an SMB share)."""
    port = free_port()
    connection = nas if isinstance(nas, dict) else {"Type": "local", "Path": str(nas)}
    node = orthanc_factory({"Connection": connection,
                            "DataDirectory": str(tmp_path / name / "nasdata"),
                            "Database": {"Type": "postgresql", "Url": url},
                            "ShareServer": {"Port": port}, **more}, workdir=tmp_path / name, extra=extra)
    node.share_port = port
    return node


def wait_for(check, timeout: float = 60, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_link_made_on_one_node_downloads_from_the_other_and_a_revocation_holds_everywhere(
        orthanc_factory, tmp_path, nas, pg_database):
    a = start_node(orthanc_factory, tmp_path, "a", nas, pg_database)
    b = start_node(orthanc_factory, tmp_path, "b", nas, pg_database)
    assert a.index()["phase"] == "done"
    found = b.get("/nas/search", params={"q": "cluster p3"})  # B never indexed: it reads A's index
    assert found.status_code == 200 and len(found.json()) == 1
    key = found.json()[0]["series_key"]

    share = a.post("/nas/shares", json={"series": [key], "layout": "folders"}).json()
    through_b = f"http://127.0.0.1:{b.share_port}/share/{share['token']}"
    through_a = f"http://127.0.0.1:{a.share_port}/share/{share['token']}"
    answer = requests.get(through_b, timeout=60)
    assert answer.status_code == 200
    assert len([n for n in zipfile.ZipFile(io.BytesIO(answer.content)).namelist() if n.endswith(".dcm")]) == 40
    assert [s["id"] for s in b.get("/nas/shares").json()] == [share["id"]]

    assert b.delete(f"/nas/shares/{share['id']}").status_code == 200
    assert requests.get(through_a, timeout=60).status_code == 410  # revoked on B, refused on A at once
    assert requests.get(through_b, timeout=60).status_code == 410


def test_one_run_for_the_cluster_seen_and_stopped_from_any_node(orthanc_factory, tmp_path, nas, pg_database):
    a = start_node(orthanc_factory, tmp_path, "a", nas, pg_database, Throttle=SLOW)
    b = start_node(orthanc_factory, tmp_path, "b", nas, pg_database, Throttle=SLOW)
    assert a.post("/nas/index", json={}).status_code == 202
    refused = b.post("/nas/index", json={})
    assert refused.status_code == 409 and refused.json()["kind"] == "busy"
    seen = wait_for(lambda: (s := b.get("/nas/status").json())["running"] and s["files_processed"] > 0 and s,
                    what="B to show A's run")
    assert seen["phase"] == "indexing" and seen["node"]

    # the connection cannot change on either node while the cluster's run goes on
    before = b.get("/nas/config").json()["Connection"]
    for node in (a, b):
        saved = node.put("/nas/config", json={"Connection": {"Type": "local", "Path": str(nas / "P0")}})
        assert saved.status_code == 409 and saved.json()["kind"] == "busy", saved.text
    assert seen["node"] in saved.json()["error"]  # B names the run's node
    assert b.get("/nas/config").json()["Connection"] == before
    assert not (tmp_path / "b" / "nasdata" / "nas-config.json").exists()

    stopped = b.delete("/nas/index").json()
    assert stopped["stopping"] is True
    assert a.wait_index(timeout=60)["phase"] == "cancelled"
    final = wait_for(lambda: (s := b.get("/nas/status").json())["phase"] == "cancelled" and s,
                     what="B to show the run cancelled")
    assert final["files_processed"] < 240  # it stopped before the end
    assert b.put("/nas/config", json={"Connection": before}).status_code == 200  # the run ended: saved

    assert b.post("/nas/index", json={}).status_code == 202  # the cluster's run is free again: B takes it
    assert a.post("/nas/index", json={}).status_code == 409
    assert b.delete("/nas/index").json()["stopping"] is True
    b.wait_index(timeout=60)


def test_postgresql_stopped_mid_run_fails_the_run_and_everything_recovers(
        orthanc_factory, tmp_path, nas, pg_database, postgres):
    a = start_node(orthanc_factory, tmp_path, "a", nas, pg_database, Throttle=SLOW)
    assert a.post("/nas/index", json={}).status_code == 202
    wait_for(lambda: a.get("/nas/status").json()["files_processed"] >= 30, what="the run to write")
    postgres.stop()
    try:
        failed = a.wait_index(timeout=120)
        assert failed["phase"] == "failed"
        assert failed["failure"]["kind"] == "database" and failed["failure"]["hint"]
        down = a.get("/nas/search")
        assert down.status_code == 503 and down.json()["kind"] == "database"
    finally:
        postgres.start()
    # back by itself: searches answer, and the next run completes the index
    wait_for(lambda: a.get("/nas/search").status_code == 200, what="searches to answer again")
    assert a.index(timeout=120)["phase"] == "done"
    assert int(a.get("/nas/search", params={"limit": 1}).headers["X-Total-Count"]) == 6
    files = sum(s["file_count"] for s in a.get("/nas/search").json())
    assert files == 240


def test_both_nodes_read_parts_of_one_run_and_a_node_killed_mid_run_loses_nothing(
        orthanc_factory, tmp_path, nas, pg_database):
    import psycopg

    a = start_node(orthanc_factory, tmp_path, "a", nas, pg_database, Throttle=SLOW)
    b = start_node(orthanc_factory, tmp_path, "b", nas, pg_database, Throttle=SLOW)
    db = psycopg.connect(pg_database, autocommit=True)

    def b_items(state: str) -> int:  # items of the run held or finished by the node that did not start it
        return db.execute("SELECT count(*) FROM work_items w JOIN cluster_run c ON c.run_id=w.run_id "
                          "WHERE w.state=%s AND w.node<>c.node", (state,)).fetchone()[0]

    def b_ahead() -> bool:  # B's counters (as B wrote them) hold files of a folder it has not finished
        row = db.execute("SELECT r.status FROM run_nodes r JOIN cluster_run c ON c.run_id=r.run_id "
                         "WHERE r.node<>c.node").fetchone()
        finished = db.execute("SELECT coalesce(sum(w.files), 0) FROM work_items w JOIN cluster_run c ON "
                              "c.run_id=w.run_id WHERE w.state='done' AND w.node<>c.node").fetchone()[0]
        return bool(row) and json.loads(row[0])["files_processed"] > finished

    assert a.post("/nas/index", json={}).status_code == 202
    wait_for(lambda: b_items("done") >= 1 and b_items("taken") >= 1 and b_ahead(), timeout=120,
             what="node B to finish one folder and be reading another")
    b.kill9()  # B's folder returns to A once its lease expires; A reads it again

    final = a.wait_index(timeout=240)
    assert final["phase"] == "done", final
    # the status counts each file once: not B's files of the folder A read again
    assert (final["files_processed"], final["enumerated_files"], final["errors"]) == (240, 240, 0), final
    run_id, coordinator = db.execute("SELECT run_id, node FROM cluster_run").fetchone()
    states = db.execute("SELECT state, node FROM work_items WHERE run_id=%s", (run_id,)).fetchall()
    # the root's own files, each P* folder's own files and each P*/CT folder (split while under 32 items)
    assert len(states) == 13 and {s for s, _ in states} == {"done"}
    assert len({node for _, node in states}) == 2  # B's finished folders stayed B's
    files = db.execute("SELECT count(*), count(DISTINCT path), min(seen_run), sum((error IS NULL)::int) "
                       "FROM files").fetchone()
    assert files == (240, 240, run_id, 240)  # every file once, each seen by this run, none lost
    assert sum(s["file_count"] for s in a.get("/nas/search").json()) == 240
    db.close()


def test_status_on_either_node_counts_every_node_s_part_of_the_run(orthanc_factory, tmp_path, nas, pg_database):
    import psycopg

    a = start_node(orthanc_factory, tmp_path, "a", nas, pg_database, Throttle=SLOW)
    b = start_node(orthanc_factory, tmp_path, "b", nas, pg_database, Throttle=SLOW)
    db = psycopg.connect(pg_database, autocommit=True)
    own_file = tmp_path / "a" / "nasdata" / "index_status.json"  # A's own counters only

    def b_part() -> int:  # files node B read for the run, as B wrote them
        row = db.execute("SELECT r.status FROM run_nodes r JOIN cluster_run c ON c.run_id=r.run_id "
                         "WHERE r.node<>c.node").fetchone()
        return json.loads(row[0])["files_processed"] if row else 0

    assert a.post("/nas/index", json={}).status_code == 202
    wait_for(lambda: b_part() >= 50, timeout=120, what="node B to read its part")
    a_own, b_own = json.loads(own_file.read_text())["files_processed"], b_part()
    during = a.get("/nas/status").json()  # A's own count, at most 49 files ahead of its file, plus B's
    assert during["files_processed"] >= a_own + b_own

    assert a.wait_index(timeout=240)["phase"] == "done"
    assert 0 < b_part() < 240
    for node in (a, b):
        final = wait_for(lambda n=node: (s := n.get("/nas/status").json())["phase"] == "done" and s,
                         what="the run done")
        assert (final["files_processed"], final["enumerated_files"], final["errors"]) == (240, 240, 0), final
        assert final["files_per_second"] > 0
    db.close()


def test_a_nas_with_a_single_top_folder_is_still_read_by_both_nodes(orthanc_factory, tmp_path, archive_nas,
                                                                      pg_database):
    import psycopg

    a = start_node(orthanc_factory, tmp_path, "a", archive_nas, pg_database, Throttle=SLOW)
    start_node(orthanc_factory, tmp_path, "b", archive_nas, pg_database, Throttle=SLOW)
    assert a.post("/nas/index", json={}).status_code == 202
    assert a.wait_index(timeout=240)["phase"] == "done"
    db = psycopg.connect(pg_database, autocommit=True)
    run_id = db.execute("SELECT run_id FROM cluster_run").fetchone()[0]
    listed = dict(db.execute("SELECT node, sum(files) FROM work_items WHERE run_id=%s GROUP BY node",
                             (run_id,)).fetchall())
    assert len(listed) == 2 and min(listed.values()) >= 40, listed  # each node walked and read a share
    assert sum(listed.values()) == 240
    files = db.execute("SELECT count(*), count(DISTINCT path), min(seen_run), sum((error IS NULL)::int) "
                       "FROM files").fetchone()
    assert files == (240, 240, run_id, 240)
    db.close()


#: Orthanc takes each instance a third of a second later (its Lua filter, run for every instance stored):
#: a job that lasts long enough to be watched and cancelled
SLOW_STORE = 'function ReceivedInstanceFilter(dicom, origin, info)\n  os.execute("sleep 0.3")\n  return true\nend\n'


def test_a_job_started_on_one_node_is_listed_and_cancelled_on_the_other(orthanc_factory, tmp_path, nas, pg_database):
    slow = tmp_path / "slow.lua"
    slow.write_text(SLOW_STORE)
    a = start_node(orthanc_factory, tmp_path, "a", nas, pg_database, extra={"LuaScripts": [str(slow)]})
    assert a.index()["phase"] == "done"
    keys = [s["series_key"] for s in a.get("/nas/search").json()]
    job_id = a.post("/nas/retrieve", json={"series": keys}).json()["job"]
    wait_for(lambda: a.get(f"/nas/jobs/{job_id}").json()["files_done"] >= 1, what="A's job to run")

    b = start_node(orthanc_factory, tmp_path, "b", nas, pg_database)  # B's start leaves A's job alone
    seen = b.get(f"/nas/jobs/{job_id}").json()
    assert seen["state"] == "running" and seen["files_total"] == 240, seen
    assert [job["id"] for job in b.get("/nas/jobs").json()] == [job_id]
    assert seen["node"] and seen["node"] == a.get(f"/nas/jobs/{job_id}").json()["node"]
    progress = wait_for(lambda: (j := b.get(f"/nas/jobs/{job_id}").json())["files_done"] > seen["files_done"] and j,
                        what="B to see the job's progress")
    assert progress["state"] == "running"

    cancelled = b.delete(f"/nas/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["id"] == job_id
    final = wait_for(lambda: (j := a.get(f"/nas/jobs/{job_id}").json())["state"] not in ("pending", "running") and j,
                     timeout=30, what="A to end the job cancelled on B")
    assert final["state"] == "cancelled" and final["files_done"] < 240, final
    assert b.get(f"/nas/jobs/{job_id}").json()["state"] == "cancelled"
    assert len(a.get("/instances").json()) == final["files_done"]  # Orthanc had none before


DENIED = "archive 2024/zz denied"


@pytest.fixture(scope="module")
def smb_nas():
    """A Samba share (tests/support/smbd.py) four folder levels deep, with files at every level and names with
    spaces, non-ASCII letters and `%`, and a folder the NAS account may not list (`DENIED`); its readable
    folders and files (paths relative to the share) with it."""
    root = make_share_dir("nas-cluster-smb-")
    folders = ["", "archive 2024"] + [f"archive 2024/P{n} Ünï {n}0%" for n in range(8)]
    folders += [f"{p}/{s}" for p in folders[2:] for s in ("CT 检查", "MR t2")]
    folders += [f"{f}/more" for f in folders[10:]]
    count = {0: 2, 1: 1, 2: 1, 3: 3, 4: 10}  # files of each folder by its depth
    files = []
    for n, folder in enumerate(folders):
        depth = folder.count("/") + 1 if folder else 0
        written = write_series(os.path.join(root, folder), count[depth], names=f"IM {n} {{:02d}}.dcm",
                               PatientName=f"SMB^{n}", PatientID=f"S{n}", Modality="CT")
        files += [os.path.relpath(path, root) for path in written]
    for folder, _dirs, names in os.walk(root):  # smbd reads as nasuser
        os.chmod(folder, 0o755)
        for name in names:
            os.chmod(os.path.join(folder, name), 0o644)
    write_series(os.path.join(root, DENIED, "CT"), 2)
    os.chmod(os.path.join(root, DENIED), 0)  # nasuser may not list it
    server = SambaServer(root).start()
    yield server, folders, files
    server.cleanup()
    shutil.rmtree(root, ignore_errors=True)


def test_a_cluster_run_over_smb_splits_the_share_below_its_top_and_indexes_every_file_once(
        orthanc_factory, tmp_path, smb_nas, pg_database):
    import psycopg

    server, folders, files = smb_nas
    share = {"Type": "smb", "Host": server.host, "Port": server.port, "Share": server.share,
             "Username": server.user, "Password": server.password}
    a = start_node(orthanc_factory, tmp_path, "a", share, pg_database, Throttle=SLOW)  # B joins before A is done
    start_node(orthanc_factory, tmp_path, "b", share, pg_database)
    final = a.index(timeout=120)
    assert final["phase"] == "done", final
    assert (final["files_processed"], final["enumerated_files"], final["errors"]) == (len(files),) * 2 + (1,), final
    assert [e["path"] for e in final["error_samples"]] == [DENIED], final

    db = psycopg.connect(pg_database, autocommit=True)
    run_id = db.execute("SELECT run_id FROM cluster_run").fetchone()[0]
    items = db.execute("SELECT folder, recursive, state FROM work_items WHERE run_id=%s", (run_id,)).fetchall()
    # every folder down to the series folders its own item (listed over SMB to split further); `more` whole,
    # and the folder that could not be listed, whose walk counted the error
    assert {s for _, _, s in items} == {"done"}
    nodes = db.execute("SELECT count(DISTINCT node) FROM work_items WHERE run_id=%s", (run_id,)).fetchone()[0]
    assert nodes == 2  # each node walked items of the share
    assert sorted((f, r) for f, r, _ in items) == sorted([(f, f.endswith("/more")) for f in folders] + [(DENIED, 1)])
    indexed = db.execute("SELECT path, seen_run, error FROM files").fetchall()
    assert sorted(p for p, _, _ in indexed) == sorted(files)  # each file once, by its path on the share
    assert {(seen, error) for _, seen, error in indexed} == {(run_id, None)}
    db.close()
    found = a.get("/nas/search", params={"limit": 1000})
    assert int(found.headers["X-Total-Count"]) == len(folders)  # one series per folder
    assert sum(s["file_count"] for s in found.json()) == len(files)
