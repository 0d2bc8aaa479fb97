"""Indexing an SMB share through a real Orthanc and a real smbd: the same index as a local folder,
refused logons and files, a NAS that freezes, dies or slows down, and credentials that change.

The smbd of this module serves a corpus of its own (a few thousand sparse files, so a run lasts
long enough to freeze the NAS in the middle of it) and is frozen (SIGSTOP), killed and slowed
down (through a delaying proxy) by the tests; each test leaves it running.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import time
from dataclasses import asdict

import psutil
import pytest
from bench.corpus import write_corpus
from tests.support.orthanc import OrthancServer
from tests.support.smbd import SambaServer, SilentListener, make_share_dir, smb_client_processes
from tests.support.tcp_proxy import DelayProxy

pytestmark = pytest.mark.integration

FILES, SERIES_SIZE = 2400, 40


@pytest.fixture(scope="module")
def corpus():
    root = make_share_dir("nas-smb-indexing-")
    summary = write_corpus(root, FILES, series_size=SERIES_SIZE)
    for folder, _dirs, files in os.walk(root):  # smbd reads as nasuser
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    yield root, summary
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def nas(corpus):
    server = SambaServer(corpus[0]).start()
    yield server
    server.cleanup()


@pytest.fixture(autouse=True)
def nas_answers(nas):
    """Each test starts with the module's smbd answering (see `SambaServer.ensure_answering`)."""
    nas.ensure_answering()
    yield


@pytest.fixture
def running_nas(nas):
    """The module's smbd, running again after the test whatever the test did to it."""
    yield nas
    if nas.proc is None:
        nas.start()
    else:
        nas.resume()


def smb(nas: SambaServer, **overrides) -> dict:
    connection = {"Type": "smb", "Host": nas.host, "Port": nas.port, "Share": nas.share,
                  "Username": nas.user, "Password": nas.password}
    connection.update(overrides)
    return {"Connection": connection}


def start_run(o: OrthancServer, full: bool = False) -> float:
    answer = o.post("/nas/index", json={"full": full})
    assert answer.status_code == 202, answer.text
    return time.monotonic()


def wait_until(o: OrthancServer, condition, timeout: float = 60, interval: float = 0.05) -> dict:
    """Poll the status until `condition(status)` holds; returns that status."""
    deadline = time.monotonic() + timeout
    status = {}
    while time.monotonic() < deadline:
        status = o.get("/nas/status").json()
        if condition(status):
            return status
        time.sleep(interval)
    raise AssertionError(f"status never reached the condition within {timeout}s: {status}")


def processed_at_least(n: int):
    return lambda s: s["files_processed"] >= n or not s["running"]


def run_until_300(o: OrthancServer) -> None:
    """Start a full run (every file read again) and wait until it has processed 300 files and still runs."""
    start_run(o, full=True)
    assert wait_until(o, processed_at_least(300))["running"]


def assert_complete(o: OrthancServer, s: dict, summary: dict, context=None) -> None:
    """The run ended done, without an error, over every file; index.db is sound and holds them all."""
    assert s["phase"] == "done" and s["errors"] == 0, context or s
    assert s["files_processed"] == summary["files"], context or s
    assert checked_index(o) == (summary["series"], summary["files"]), context or s


def index_contents(o: OrthancServer) -> dict:
    """series_key -> (series fields, sorted files) from the REST routes."""
    series = o.get("/nas/search", params={"limit": 1000}).json()
    contents = {}
    for row in series:
        files = o.get(f"/nas/series/{row['series_key']}").json()["files"]
        contents[row["series_key"]] = (row, sorted((f["path"], f["size"], f["SOPInstanceUID"],
                                                    f["InstanceNumber"]) for f in files))
    return contents


def checked_index(o: OrthancServer) -> tuple[int, int]:
    """(series, files in series) read from index.db, after checking the file and its counts are sound."""
    with sqlite3.connect(o.workdir / "storage" / "nas" / "index.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        wrong = db.execute("SELECT count(*) FROM series WHERE file_count != "
                           "(SELECT count(*) FROM files WHERE files.series_key = series.series_key)").fetchone()[0]
        assert wrong == 0
        series, files = db.execute("SELECT count(*), coalesce(sum(file_count), 0) FROM series").fetchone()
    return series, files


def test_the_same_index_over_smb_as_from_the_folder(orthanc_factory, nas, corpus):
    root, summary = corpus
    over_smb = orthanc_factory(smb(nas))
    s = over_smb.index()
    assert s["phase"] == "done" and s["errors"] == 0, s
    assert s["files_processed"] == summary["files"] and s["series_count"] == summary["series"]
    local = orthanc_factory({"Connection": {"Type": "local", "Path": root}})
    assert local.index()["series_count"] == summary["series"]
    remote, here = index_contents(over_smb), index_contents(local)
    assert remote.keys() == here.keys()
    for key in here:
        assert remote[key] == here[key], key
    assert sum(len(files) for _, files in remote.values()) == summary["files"]
    assert checked_index(over_smb) == (summary["series"], summary["files"])
    assert smb_client_processes(over_smb.proc.pid)  # still idle in their pool
    with open(f"/proc/{over_smb.proc.pid}/maps") as maps:
        assert "libsmbclient" not in maps.read()


def test_smb_client_processes_that_crash_cost_the_run_nothing(orthanc_factory, nas, corpus):
    _, summary = corpus
    # Paced, so that the heads are still being read when the processes crash: `files_processed` counts
    # written files, and on a busy machine the reading threads were seen 2000 files ahead of the writes.
    o = orthanc_factory({**smb(nas), "Throttle": {"Hours": "00:00-24:00", "MaxFilesPerSecond": 200}})
    run_until_300(o)
    crashed = 0
    for done in (300, 900):  # the second round only if the run is not over by then
        # Samba may hold a file a crashed process had open for about a minute before it answers (seen in CI:
        # the status unchanged for 60 s, then smbd's panic in its log); the run then goes on by itself.
        if done > 300 and not wait_until(o, processed_at_least(done), timeout=180)["running"]:
            break
        for client in smb_client_processes(o.proc.pid):  # reading heads, listing folders or waiting in the pool
            try:
                client.send_signal(signal.SIGSEGV)
                crashed += 1
            except psutil.NoSuchProcess:  # ended meanwhile
                pass
    assert crashed >= 4
    s = o.wait_index(180)
    assert_complete(o, s, summary, s["error_samples"])  # every failed request was retried on a new process
    assert "SMB client process ended (signal SIGSEGV)" in o.log()


def test_wrong_password_fails_with_auth_and_the_mount_command(orthanc_factory, nas):
    o = orthanc_factory(smb(nas, Password="not-the-password"))
    s = o.index(timeout=60)
    assert s["phase"] == "failed" and s["failure"]["kind"] == "auth", s.get("failure") or s
    hint = s["failure"]["hint"]
    assert f"mount -t cifs //127.0.0.1/dicom /mnt/nas -o ro,username=nasuser,port={nas.port}" in hint
    assert "not-the-password" not in str(s)


def test_missing_share_fails_with_not_found(orthanc_factory, nas):
    o = orthanc_factory(smb(nas, Share="nosuchshare"))
    s = o.index(timeout=60)
    assert s["phase"] == "failed" and s["failure"]["kind"] == "not_found", s
    assert "nosuchshare" in s["failure"]["error"]


@pytest.fixture
def locked(corpus):
    """A file and a series folder of the corpus made unreadable (chmod 000) until the test ends."""
    root, _ = corpus
    folders = sorted({os.path.dirname(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs if f.endswith(".dcm")})
    folder, other = folders[3], folders[7]
    file = os.path.join(other, sorted(os.listdir(other))[5])
    yield os.path.relpath(file, root), os.path.relpath(folder, root), len(os.listdir(folder))
    os.chmod(file, 0o644)
    os.chmod(folder, 0o755)


def test_unreadable_file_and_folder_are_errors_and_the_index_keeps_them(orthanc_factory, nas, corpus, locked):
    _, summary = corpus
    o = orthanc_factory(smb(nas))
    assert o.index()["errors"] == 0
    file, folder, _ = locked
    os.chmod(os.path.join(corpus[0], file), 0)
    os.chmod(os.path.join(corpus[0], folder), 0)
    s = o.index(full=True)
    assert s["phase"] == "done" and s["errors"] == 2, s
    samples = {e["path"]: e["error"] for e in s["error_samples"]}
    assert "access denied" in samples[file] and "access denied" in samples[folder], samples
    assert any("could not be listed" in w for w in s["warnings"])
    # the folder's files and the unreadable file were indexed before: nothing of them is lost
    assert checked_index(o) == (summary["series"], summary["files"])
    os.chmod(os.path.join(corpus[0], file), 0o644)
    os.chmod(os.path.join(corpus[0], folder), 0o755)
    s = o.index()
    assert s["phase"] == "done" and s["errors"] == 0 and s["files_processed"] == summary["files"]


def test_a_short_freeze_of_the_nas_and_the_run_goes_on(orthanc_factory, running_nas, corpus):
    _, summary = corpus
    o = orthanc_factory(smb(running_nas))
    run_until_300(o)
    running_nas.pause()
    time.sleep(4)
    running_nas.resume()
    assert_complete(o, o.wait_index(120), summary)


def test_a_nas_that_stays_frozen_fails_the_run_and_the_next_run_completes(orthanc_factory, running_nas, corpus):
    _, summary = corpus
    o = orthanc_factory(smb(running_nas))
    assert o.index()["series_count"] == summary["series"]
    run_until_300(o)  # every file is read again: a frozen NAS must not cost the index any of them
    running_nas.pause()
    frozen = time.monotonic()
    try:
        s = o.wait_index(180)
        elapsed = time.monotonic() - frozen
    finally:
        running_nas.resume()
    assert s["phase"] == "failed" and s["failure"]["kind"] == "network", s
    assert elapsed < 120, elapsed  # "within about two minutes"; 60 s without an answer, then the reads in flight
    assert s["errors"] < 100, s["errors"]  # it did not count the remaining files one by one
    assert checked_index(o) == (summary["series"], summary["files"])
    assert_complete(o, o.index(), summary)


def test_a_nas_killed_and_restarted_mid_run_then_a_run_completes(orthanc_factory, running_nas, corpus):
    _, summary = corpus
    o = orthanc_factory(smb(running_nas))
    run_until_300(o)
    running_nas.kill()
    time.sleep(1)
    running_nas.start()
    killed = o.wait_index(180)
    assert killed["phase"] in ("done", "failed"), killed
    checked_index(o)
    assert_complete(o, o.index(), summary, killed)


def test_a_silent_nas_fails_within_30_seconds(orthanc_factory, nas):
    with SilentListener() as silent:
        o = orthanc_factory(smb(nas, Port=silent.port))
        started = start_run(o)
        s = o.wait_index(60)
        elapsed = time.monotonic() - started
    assert s["phase"] == "failed" and s["failure"]["kind"] == "network", s
    assert elapsed < 30, elapsed
    assert "mount -t cifs" in s["failure"]["hint"]


def test_reads_in_flight_at_the_nas_stay_within_the_live_limit_as_it_goes_down_and_up(orthanc_factory, nas, corpus):
    """Requests in flight are counted at the NAS's door (the delaying proxy): never more than the
    limit the status gave from two seconds before (reads started before a cut may finish) to a
    moment after (a raise reaches the status at the run's next tick and this test's next poll)."""
    _, summary = corpus
    with DelayProxy(nas.port) as proxy:
        o = orthanc_factory({**smb(nas, Port=proxy.port), "Workers": 8})
        start_run(o, full=True)
        assert wait_until(o, lambda s: (s["enumeration_done"] and s["files_processed"] >= 300) or not s["running"],
                          timeout=60)["running"]
        proxy.delay = 0.03  # 30 ms each way: every head read takes at least three round trips
        limits: list[tuple[float, int]] = []  # (time, workers in the status)
        samples: list[tuple[float, int]] = []  # (time, requests in flight at the proxy)
        status = {}
        phase_ends = time.monotonic() + 60
        lowest = 8
        while time.monotonic() < phase_ends:
            status = o.get("/nas/status").json()
            limits.append((time.monotonic(), status["workers"]))
            lowest = min(lowest, status["workers"])
            if not status["running"]:
                break
            if lowest < 8 and proxy.delay > 0.002 and time.monotonic() > limits[0][0] + 8:
                proxy.delay = 0.002  # back to a good LAN: the limit may rise again
                phase_ends = time.monotonic() + 8
            for _ in range(5):
                samples.append((time.monotonic(), proxy.busy))
                time.sleep(0.01)
        s = o.wait_index(120)
    assert lowest < 8, limits  # the slow NAS lowered the limit
    over = [(t, busy) for t, busy in samples
            if busy > max(w for when, w in limits if t - 2.0 <= when <= t + 0.3)]
    assert not over, [(busy, [(round(when - t, 2), w) for when, w in limits if t - 2 <= when <= t + 0.3])
                      for t, busy in over[:3]]
    assert max(busy for _, busy in samples) >= 2  # reads did run side by side (the count is real)
    assert s["phase"] == "done" and s["files_processed"] == summary["files"], s
    warning = [w for w in s["warnings"] if "slowly" in w]
    assert warning and f"mount -t cifs //127.0.0.1/dicom /mnt/nas -o ro,username=nasuser,port={proxy.port}" \
        in warning[0]


def test_new_credentials_drop_the_old_sessions(nas, tmp_path):
    from orthanc_nas.app import NasApp
    from orthanc_nas.config import parse_settings
    from orthanc_nas.errors import NasAuthError

    def sessions() -> int:
        """TCP connections to the smbd of this process and its SMB client processes."""
        me = psutil.Process()
        count = 0
        for proc in [me, *me.children()]:
            try:
                count += sum(1 for c in proc.net_connections("tcp")
                             if c.raddr and c.raddr.port == nas.port and c.status == psutil.CONN_ESTABLISHED)
            except psutil.NoSuchProcess:
                pass
        return count

    app = NasApp(parse_settings({"Connection": asdict(nas.connection()), "DataDirectory": str(tmp_path)}))
    try:
        old = app.source()
        old.check_root()
        assert sessions() == 1
        clients = list(old._idle)
        app.reconnect(app.settings.with_connection(nas.connection(Password="changed-elsewhere")))
        deadline = time.monotonic() + 10
        while sessions() and time.monotonic() < deadline:  # the client processes log off and exit
            time.sleep(0.05)
        assert sessions() == 0 and all(client.proc.wait(10) == 0 for client in clients)
        with pytest.raises(NasAuthError):  # the new password is the one used
            app.source().check_root()
        assert app.source() is not old
        app.reconnect(app.settings.with_connection(nas.connection()))
        assert app.source().list_root()
    finally:
        app.close()
