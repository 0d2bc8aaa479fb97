"""SmbSource against a real smbd on loopback: listing, reads, errors, time limits, threads."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from dataclasses import replace

import psutil
import pytest
from tests.support.fixtures_smb import *  # noqa: F403 -- smbd, smb_share_dir, smb_connection, smb_source
from tests.support.smbd import SilentListener

from orthanc_nas.config import DEFAULT_EXCLUDED_FOLDERS
from orthanc_nas.errors import NasAuthError, NasNetworkError, NasNotFound, NasPermissionError
from orthanc_nas.sources.base import FileEntry, WalkError
from orthanc_nas.sources.local import LocalSource
from orthanc_nas.sources.scope import WalkScope
from orthanc_nas.sources.smb import SmbSource

pytestmark = pytest.mark.integration

FAST = 2.0  # request timeout for the hang tests: a call may take up to 3 of them (see smb.py)


def disk(root: str, rel: str, size: int | None = None) -> bytes:
    with open(os.path.join(root, rel), "rb") as fh:
        return fh.read() if size is None else fh.read(size)


def retried(call, attempts: int = 4):
    """Call like the indexer does: network errors are retried (here without backoff)."""
    for attempt in range(attempts):
        try:
            return call()
        except NasNetworkError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)


def test_walk_matches_the_local_walk(smb_source, smb_share_dir):
    stop = threading.Event()
    remote = list(smb_source.walk(stop))
    local = {e.path: e for e in LocalSource(smb_share_dir).walk(stop)}
    assert not [e for e in remote if isinstance(e, WalkError)]
    assert sorted(e.path for e in remote) == sorted(local)
    assert any(" " in p for p in local) and any("检查" in p for p in local) and any("Ü" in p for p in local)
    for e in remote:
        assert isinstance(e, FileEntry)
        assert e.size == local[e.path].size, e.path
        assert abs(e.mtime_ns - local[e.path].mtime_ns) < 1_000_000_000, e.path


def test_read_head_and_open_give_the_bytes_on_disk(smb_source, smb_share_dir):
    rel = "李^小龙/检查 一/IM 0002.dcm"
    assert smb_source.read_head(rel, 132) == disk(smb_share_dir, rel, 132)
    assert smb_source.read_head(rel, 1 << 20) == disk(smb_share_dir, rel)  # shorter file: all of it
    with smb_source.open("MÜLLER^JÜRGEN/MR Kopf/T1 ä ö ü/IM 0001.dcm") as fh:
        assert fh.read() == disk(smb_share_dir, "MÜLLER^JÜRGEN/MR Kopf/T1 ä ö ü/IM 0001.dcm")


def test_list_root_and_a_sub_folder_as_root(smb_source, smb_connection):
    assert smb_source.list_root() == sorted(["DOE^JOHN/", "MÜLLER^JÜRGEN/", "O'BRIEN^ANNE/", "flat/", "李^小龙/"])
    sub = SmbSource(replace(smb_connection, Path="DOE^JOHN/CT thorax 2024"))
    assert "Série 2 (bone)/" in sub.list_root() and "IM 0001.dcm" in sub.list_root()
    assert len([e for e in sub.walk(threading.Event())]) == 10
    sub.close()


def test_wrong_password_is_an_auth_error_with_the_mount_alternative(smb_connection):
    source = SmbSource(replace(smb_connection, Password="wrong-password"))
    with pytest.raises(NasAuthError) as info:
        source.check_root()
    hint = info.value.hint
    assert "mount -t cifs //127.0.0.1/dicom /mnt/nas -o ro,username=nasuser" in hint
    assert f"port={smb_connection.Port}" in hint and "net use" in hint and "wrong-password" not in hint


def test_missing_share_and_missing_folder_are_not_found(smb_connection):
    with pytest.raises(NasNotFound, match="no share 'nope'"):
        SmbSource(replace(smb_connection, Share="nope")).check_root()
    with pytest.raises(NasNotFound, match="not found"):
        SmbSource(replace(smb_connection, Path="no such folder")).check_root()
    with pytest.raises(NasNotFound):
        SmbSource(smb_connection).read_head("flat/missing.dcm", 10)


@pytest.fixture
def locked(smb_share_dir):
    """A chmod 000 file and a chmod 000 folder (with a file inside), removed after the test."""
    os.makedirs(os.path.join(smb_share_dir, "zz locked"))
    for rel in ("zz locked/secret.dcm", "flat/locked.dcm"):
        with open(os.path.join(smb_share_dir, rel), "wb") as fh:
            fh.write(b"x" * 200)
    os.chmod(os.path.join(smb_share_dir, "flat/locked.dcm"), 0)
    os.chmod(os.path.join(smb_share_dir, "zz locked"), 0)
    yield
    os.chmod(os.path.join(smb_share_dir, "zz locked"), 0o755)
    os.remove(os.path.join(smb_share_dir, "flat/locked.dcm"))
    shutil.rmtree(os.path.join(smb_share_dir, "zz locked"))


def test_unreadable_file_and_folder_are_permission_errors(smb_source, locked):
    with pytest.raises(NasPermissionError):
        smb_source.read_head("flat/locked.dcm", 10)
    items = list(smb_source.walk(threading.Event()))
    errors = [e for e in items if isinstance(e, WalkError)]
    assert [(e.path, e.error.kind) for e in errors] == [("zz locked", "permission")]
    files = {e.path for e in items if isinstance(e, FileEntry)}
    assert "flat/locked.dcm" in files and "DOE^JOHN/CT thorax 2024/IM 0006.dcm" in files  # the walk went on
    assert smb_source.read_head("flat/IM 0001.dcm", 4) == b"\0\0\0\0"  # the connection is still fine


@pytest.mark.parametrize("drop_syn", [False, True], ids=["silent", "unreachable"])
def test_silent_or_unreachable_server_fails_within_30_seconds(smb_connection, drop_syn):
    with SilentListener(drop_syn=drop_syn) as silent:
        source = SmbSource(replace(smb_connection, Port=silent.port))  # production timeouts
        started = time.monotonic()
        with pytest.raises(NasNetworkError) as info:
            source.check_root()
        elapsed = time.monotonic() - started
    assert elapsed < 30, elapsed
    assert "mount -t cifs" in info.value.hint


def test_frozen_server_times_out_then_a_retry_works(smbd, smb_connection, smb_share_dir):
    source = SmbSource(smb_connection, timeout=FAST)
    rel = "flat/IM 0003.dcm"
    assert source.read_head(rel, 64) == disk(smb_share_dir, rel, 64)  # a pooled, established session
    smbd.pause()
    try:
        started = time.monotonic()
        with pytest.raises(NasNetworkError):
            source.read_head(rel, 64)
        elapsed = time.monotonic() - started
        assert elapsed < 3 * FAST + 1.5, elapsed
    finally:
        smbd.resume()
    assert source.read_head(rel, 64) == disk(smb_share_dir, rel, 64)  # the retry reconnects
    source.close()


def test_killed_and_restarted_server_a_later_read_works(smbd, smb_connection, smb_share_dir):
    source = SmbSource(smb_connection, timeout=FAST)
    rel = "O'BRIEN^ANNE/Études/IRM genou/IM 0005.dcm"
    assert source.read_head(rel, 200) == disk(smb_share_dir, rel, 200)
    smbd.kill()
    with pytest.raises(NasNetworkError):
        source.read_head(rel, 200)
    smbd.start()
    assert retried(lambda: source.read_head(rel, 200)) == disk(smb_share_dir, rel, 200)
    source.close()


def test_sixteen_threads_read_correct_bytes(smb_source, smb_share_dir):
    # smbd 4.17 itself occasionally panics under this load (plain smbclient processes trigger it
    # too), dropping one connection: such reads are retried as the indexer would.
    paths = [e.path for e in smb_source.walk(threading.Event())]
    expected = {p: disk(smb_share_dir, p) for p in paths}
    failures: list[str] = []

    def worker(k: int) -> None:
        try:
            for j in range(40):
                p = paths[(k * 5 + j * 7) % len(paths)]
                head = retried(lambda p=p: smb_source.read_head(p, 256))
                if head != expected[p][:256]:
                    failures.append(f"head {p}")
                if j % 8 == 0:
                    with retried(lambda p=p: smb_source.open(p)) as fh:
                        if fh.read() != expected[p]:
                            failures.append(f"open {p}")
        except Exception as exc:  # recorded, so the assertion below names it
            failures.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    assert "libsmbclient" not in open("/proc/self/maps").read()  # every call went to client processes
    assert 1 < len(smb_source._idle) <= 16


def test_close_drops_connections_and_the_source_still_works(smb_source, smb_share_dir):
    assert smb_source.read_head("flat/IM 0002.dcm", 8) == disk(smb_share_dir, "flat/IM 0002.dcm", 8)
    smb_source.close()
    assert smb_source.read_head("flat/IM 0002.dcm", 8) == disk(smb_share_dir, "flat/IM 0002.dcm", 8)


def idle_client(source: SmbSource, rel: str = "flat/IM 0002.dcm"):
    """Read once, so one client process waits in the pool; return it."""
    source.read_head(rel, 8)
    assert len(source._idle) == 1
    return source._idle[0]


def zombie(pid: int, timeout: float = 10) -> None:
    """Wait until a signalled child has ended, without reaping it (its Popen is left to do that)."""
    deadline = time.monotonic() + timeout
    while psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        assert time.monotonic() < deadline, f"process {pid} did not end"
        time.sleep(0.02)


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
def test_a_client_process_that_crashes_in_a_request_is_a_network_error_and_the_retry_works(
        smb_connection, smb_share_dir, sig, caplog):
    source = SmbSource(smb_connection)
    client = idle_client(source)
    os.kill(client.proc.pid, signal.SIGSTOP)  # alive when taken from the pool; crashes once the request is sent

    def crash():
        os.kill(client.proc.pid, sig)
        os.kill(client.proc.pid, signal.SIGCONT)

    timer = threading.Timer(0.5, crash)
    timer.start()
    with pytest.raises(NasNetworkError, match=f"SMB client process ended \\(signal {sig.name}\\)"):
        source.read_head("flat/IM 0002.dcm", 8)
    timer.join()
    assert f"signal {sig.name}" in caplog.text  # the log says so
    assert source.read_head("flat/IM 0002.dcm", 8) == disk(smb_share_dir, "flat/IM 0002.dcm", 8)
    assert source._idle[0] is not client
    source.close()


def test_idle_client_processes_that_crashed_cost_a_call_nothing(smb_connection, smb_share_dir, caplog):
    source = SmbSource(smb_connection)
    taken = [source._checkout("test") for _ in range(5)]  # five connected processes, then all idle in the pool
    for client, generation in taken:
        source._checkin(client, generation)
    for client, _ in taken:
        os.kill(client.proc.pid, signal.SIGSEGV)
    for client, _ in taken:
        zombie(client.proc.pid)
    # no error, not even one to retry: the ended processes are dropped, a new one reads
    assert source.read_head("flat/IM 0002.dcm", 8) == disk(smb_share_dir, "flat/IM 0002.dcm", 8)
    assert len(source._idle) == 1 and source._idle[0] not in [c for c, _ in taken]
    assert all(c.proc.returncode == -signal.SIGSEGV for c, _ in taken)  # waited for: no zombie left
    assert caplog.text.count("idle SMB client process ended (signal SIGSEGV)") == 5
    source.close()


def test_a_client_process_that_stops_answering_is_killed(smb_connection, smb_share_dir):
    source = SmbSource(smb_connection, timeout=FAST)
    client = idle_client(source)
    os.kill(client.proc.pid, signal.SIGSTOP)
    started = time.monotonic()
    with pytest.raises(NasNetworkError, match="did not answer within"):
        source.read_head("flat/IM 0002.dcm", 8)
    assert time.monotonic() - started < 4 * FAST + 2
    assert client.proc.returncode == -signal.SIGKILL
    assert source.read_head("flat/IM 0002.dcm", 8) == disk(smb_share_dir, "flat/IM 0002.dcm", 8)
    source.close()


def test_idle_client_processes_are_closed_and_leave_no_zombie(smb_connection, smb_share_dir):
    source = SmbSource(smb_connection, idle_exit=1.5)
    client = idle_client(source)
    deadline = time.monotonic() + 10
    while client.proc.returncode is None and time.monotonic() < deadline:  # set when the pool waits for it
        time.sleep(0.1)
    assert not source._idle and client.proc.returncode == 0  # closed by the pool: logged off, waited for
    assert not [p for p in psutil.Process().children() if p.status() == psutil.STATUS_ZOMBIE]
    assert source.read_head("flat/IM 0002.dcm", 8) == disk(smb_share_dir, "flat/IM 0002.dcm", 8)
    with source.open("flat/IM 0002.dcm") as fh:  # an open file keeps its process, however long it waits
        time.sleep(3)
        assert fh.read() == disk(smb_share_dir, "flat/IM 0002.dcm")
    source.close()


def test_a_client_process_left_alone_exits_by_itself(smb_connection):
    source = SmbSource(smb_connection, idle_exit=1.0)
    client = idle_client(source)
    source._idle.clear()  # as if its pool were gone (Orthanc died): nothing closes it
    assert client.proc.wait(10) == 0


@pytest.fixture
def snapshot_copies(smb_share_dir):
    """Copies of every file under the share's snapshot folders (Synology's, NetApp's, a recycle bin), removed after."""
    made = [os.path.join(smb_share_dir, "@eaDir"), os.path.join(smb_share_dir, ".snapshot", "hourly.0"),
            os.path.join(smb_share_dir, "flat", "#recycle")]
    originals = [e.path for e in LocalSource(smb_share_dir).walk(threading.Event())]
    for folder in made:
        shutil.copytree(smb_share_dir, folder + ".tmp", ignore=shutil.ignore_patterns("@eaDir*", ".snapshot*", "#recycle*"))
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        os.rename(folder + ".tmp", folder)
    for folder, _dirs, files in os.walk(smb_share_dir):  # smbd reads as nasuser
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    yield originals
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(os.path.join(smb_share_dir, ".snapshot"), ignore_errors=True)


def test_snapshot_and_recycle_folders_are_never_walked_over_smb(smb_source, snapshot_copies):
    stop = threading.Event()
    everything = [e.path for e in smb_source.walk(stop)]
    assert len(everything) == 4 * len(snapshot_copies)  # the copies are there to be seen
    scope = WalkScope("", DEFAULT_EXCLUDED_FOLDERS, ())
    chunks = list(smb_source.walk(stop, scope, chunks=True))
    walked = [e.path for chunk in chunks for e in chunk]
    assert sorted(walked) == sorted(snapshot_copies)
    folder = [e.path for e in smb_source.walk(stop, WalkScope("flat", DEFAULT_EXCLUDED_FOLDERS, (".dcm",)))]
    assert folder == [p for p in snapshot_copies if p.startswith("flat/") and not p.endswith(".dcm")]
    folder = [e.path for e in smb_source.walk(stop, WalkScope("flat", DEFAULT_EXCLUDED_FOLDERS, ()))]
    assert sorted(folder) == sorted(p for p in snapshot_copies if p.startswith("flat/"))
