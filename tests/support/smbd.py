"""A private Samba server on loopback for tests and benchmarks (no pytest needed to import it).

`SambaServer(share_dir)` writes an smb.conf into a temporary folder, registers the
user `nasuser` in that folder's own password database, and runs `smbd` on a free
port. smbd runs in a session of its own: when it stops it signals its whole
process group, which would otherwise be the test runner's. Signals for pause,
resume and kill go to that whole group, so the per-connection children (the
processes that actually answer a client) are frozen or killed too.

`SilentListener` accepts TCP connections and never answers: a NAS that hangs (or, with
`drop_syn=True`, one that never answers the TCP handshake: an unreachable host).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import psutil

USER = "nasuser"
PASSWORD = "secret"
SHARE = "dicom"

SMB_CONF = """\
[global]
  smb ports = {port}
  interfaces = lo
  bind interfaces only = yes
  pid directory = {d}/run
  private dir = {d}/private
  lock directory = {d}/lock
  state directory = {d}/state
  cache directory = {d}/cache
  ncalrpc dir = {d}/run/ncalrpc
  log file = {d}/log.%m
  log level = 1
  disable spoolss = yes
  load printers = no
  server role = standalone server
  map to guest = never
[{share}]
  path = {share_dir}
  read only = yes
  valid users = {user}
"""


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def smb_client_processes(pid: int) -> list[psutil.Process]:
    """The product's SMB client processes (`sources/smb_child.py`) among the live descendants of `pid`."""
    found = []
    for proc in psutil.Process(pid).children(recursive=True):
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and any(a.endswith("smb_child.py") for a in proc.cmdline()):
                found.append(proc)
        except psutil.NoSuchProcess:  # ended meanwhile
            pass
    return found


def ensure_user(user: str = USER) -> None:
    """Create the Unix account Samba maps the SMB user to (once per machine; no home folder)."""
    try:
        subprocess.run(["id", user], check=True, capture_output=True)
        return
    except subprocess.CalledProcessError:
        pass
    done = subprocess.run(["useradd", "-M", user], capture_output=True, text=True)
    if done.returncode not in (0, 9):  # 9: created meanwhile by someone else
        raise RuntimeError(f"useradd {user} failed: {done.stderr.strip()}")


class SambaServer:
    """One smbd serving `share_dir` as `//127.0.0.1:<port>/dicom` to nasuser/secret.

    The share folder and every folder above it must be traversable by nasuser
    (smbd reads files as that user): `make_share_dir()` gives such a folder.
    """

    def __init__(self, share_dir: str, port: int | None = None, workdir: str | None = None):
        self.share_dir = os.path.abspath(share_dir)
        self.port = port or free_port()
        self.dir = workdir or tempfile.mkdtemp(prefix="nas-smbd-")
        self.conf = os.path.join(self.dir, "smb.conf")
        self.host, self.share, self.user, self.password = "127.0.0.1", SHARE, USER, PASSWORD
        self.proc: subprocess.Popen | None = None
        for sub in ("run", "run/ncalrpc", "private", "lock", "state", "cache"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        with open(self.conf, "w", encoding="utf-8") as fh:
            fh.write(SMB_CONF.format(port=self.port, d=self.dir, share=SHARE, share_dir=self.share_dir, user=USER))
        ensure_user()
        subprocess.run(["smbpasswd", "-c", self.conf, "-s", "-a", USER], input=f"{PASSWORD}\n{PASSWORD}\n",
                       check=True, capture_output=True, text=True)

    def connection(self, **overrides):
        """The product's `Connection` for this server (fields may be overridden, e.g. Password)."""
        from orthanc_nas.config import Connection

        values = dict(Type="smb", Host=self.host, Share=self.share, Username=self.user,
                      Password=self.password, Port=self.port)
        values.update(overrides)
        return Connection(**values)

    # -- life cycle -------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> SambaServer:
        """Start smbd and wait until it lists the share.

        The lock directory (share modes, open handles: volatile state) starts empty, as after a
        NAS reboot; entries left by a killed smbd otherwise trip smbd 4.17's own assertions.
        """
        lock_dir = os.path.join(self.dir, "lock")
        shutil.rmtree(lock_dir, ignore_errors=True)
        os.makedirs(lock_dir)
        self.proc = subprocess.Popen(
            ["smbd", "-s", self.conf, "--foreground", "--no-process-group"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,  # see the module docstring: smbd signals its own process group
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"smbd exited with {self.proc.returncode}; see {self.dir}/log.*")
            try:
                socket.create_connection((self.host, self.port), timeout=1).close()
            except OSError as exc:
                last = str(exc)
                time.sleep(0.1)
                continue
            done = self.smbclient("ls", check=False)
            if done.returncode == 0:
                return
            last = done.stdout + done.stderr
            time.sleep(0.2)
        raise RuntimeError(f"smbd on port {self.port} not ready after {timeout}s: {last.strip()[-300:]}")

    def smbclient(self, command: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run one smbclient command against the share (a check independent of the product)."""
        return subprocess.run(
            ["smbclient", "-s", self.conf, "-p", str(self.port), f"//{self.host}/{self.share}",
             "-U", f"{self.user}%{self.password}", "-t", "5", "-c", command],
            capture_output=True, text=True, timeout=30, check=check)

    def healthy(self) -> bool:
        """Whether smbd lists the share now (checked with smbclient, independently of the product)."""
        try:
            return self.proc is not None and self.smbclient("ls", check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def ensure_answering(self) -> None:
        """Restart smbd if it does not list the share, showing its logs (in the test's captured output).

        Samba 4.17, the test NAS, was seen refusing every new connection (ECONNABORTED) for minutes in
        the middle of a test session; the tests that use one smbd in turn start from one that answers.
        """
        if not self.healthy():
            # straight to the session's stderr, past pytest's capture: a passing test would hide it
            sys.__stderr__.write(f"\nsmbd on port {self.port} does not list the share; restarting it. "
                                 f"smbclient says: {self._smbclient_says()}\n"
                                 f"smbd's main process: {'running' if self.proc and self.proc.poll() is None else 'ended'}; "
                                 f"listening on the port: {self._port_owners()}\n"
                                 f"Its logs:\n{self.log_tail()}\n")
            self.restart()

    def _port_owners(self) -> str:
        owners = []
        for conn in psutil.net_connections("tcp"):
            if conn.laddr and conn.laddr.port == self.port and conn.status == psutil.CONN_LISTEN:
                try:
                    owners.append(f"{conn.pid} {psutil.Process(conn.pid).cmdline()[:3]}")
                except (psutil.Error, TypeError):
                    owners.append(str(conn.pid))
        return ", ".join(owners) or "nobody"

    def _smbclient_says(self) -> str:
        try:
            done = self.smbclient("ls", check=False)
        except subprocess.TimeoutExpired:
            return "(no answer within 30 s)"
        return (done.stdout + done.stderr).strip()[-300:]

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of smbd's logs (one file per client machine, plus smbd's own)."""
        tails = []
        for name in sorted(os.listdir(self.dir)):
            if name.startswith("log."):
                with open(os.path.join(self.dir, name), errors="replace") as fh:
                    tails.append(f"== {name}\n" + "".join(fh.readlines()[-lines:]))
        return "\n".join(tails)

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)  # the group is smbd's own session (start_new_session)
            except ProcessLookupError:
                pass

    def pause(self) -> None:
        """Freeze smbd and its per-connection children (SIGSTOP): the NAS hangs, sockets stay open."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def kill(self) -> None:
        """Kill smbd and its children at once (SIGKILL): connections drop, as in a NAS crash."""
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)  # a stopped process group would keep a zombie-less wait from ending
        self._signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        """Stop smbd cleanly (SIGTERM to the group), killing it if it lingers."""
        if self.proc is None:
            return
        self._signal(signal.SIGCONT)
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
            self.proc = None
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, timeout: float = 20.0) -> None:
        """Stop and start again on the same port (a NAS reboot)."""
        self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        """Stop and remove the server's state folder (not the share)."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> SambaServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.cleanup()


def make_share_dir(prefix: str = "nas-share-") -> str:
    """A fresh folder nasuser can traverse (pytest's tmp_path is 0700 under a 0700 parent)."""
    path = tempfile.mkdtemp(prefix=prefix)
    os.chmod(path, 0o755)
    return path


class SilentListener:
    """A TCP port on loopback where the NAS hangs.

    By default it accepts connections and never answers (a frozen server). With
    `drop_syn=True` it never even completes the TCP handshake: its accept queue is
    kept full, so the kernel drops new SYNs, as for an unreachable host.
    """

    def __init__(self, drop_syn: bool = False):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if drop_syn:
            self.sock.listen(0)
            for _ in range(3):  # fill the accept queue; nobody accepts
                filler = socket.socket()
                filler.setblocking(False)
                try:
                    filler.connect(("127.0.0.1", self.port))
                except BlockingIOError:
                    pass
                self._conns.append(filler)
        else:
            self.sock.listen(64)
            self._thread = threading.Thread(target=self._accept, name="silent-listener", daemon=True)
            self._thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._conns.append(conn)  # kept open, never read: the client waits for an answer

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        for conn in self._conns:
            conn.close()
        self.sock.close()

    def __enter__(self) -> SilentListener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
