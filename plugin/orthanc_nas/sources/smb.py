"""An SMB2/3 share reached directly with host/share/user/password, without a mount.

The client is libsmbclient (through the small ctypes binding in `libsmbclient.py`),
chosen by measurement over smbprotocol and pysmbc: see `bench/smb_clients.py`.

Connections: libsmbclient never runs in this process (Orthanc's). Each SMB
connection is a client process of its own (`smb_child.py`), used by one thread at
a time: see there why. Processes live in a pool: a call takes an idle one (or
starts a new one), sends it one request, and gives it back. So each thread has a
connection of its own while it works, an open file (which may outlive the call and
be read from another thread) keeps its process until closed, and worker threads
that come and go do not leave connections behind. After a network error the
process is killed, so the next call (the indexer's retry) connects afresh, and a
process that crashed or stopped answering is a network error like any other. Idle
processes are closed after half a minute or so (and would exit by themselves after a
minute, e.g. if Orthanc died).

Errors come from libsmbclient's mapping of the server's NTSTATUS to errno. EACCES
alone does not say whether the logon or the file was refused: libsmbclient keeps
a server in its cache only once session setup and tree connect succeeded, so the
client process says, with each failure, whether its session stands; that tells the
two apart (and likewise a missing share from a missing folder for ENOENT).
"""

from __future__ import annotations

import errno
import io
import logging
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from ..config import Connection
from ..errors import (
    ConfigError,
    Internal,
    NasAuthError,
    NasError,
    NasNetworkError,
    NasNotFound,
    NasPermissionError,
)
from ..parsing import python_interpreter
from . import smb_child
from .base import FileEntry, WalkError
from .local import safe_relpath
from .scope import WalkScope
from .smb_child import NETWORK_ERRNOS
from .walk import WALK_THREADS, Folder, parallel_walk

log = logging.getLogger("orthanc_nas")

# Each SMB request (and the protocol negotiation on a new connection) gives up after this many
# seconds without an answer. A call on a pooled connection to a hung server may wait for up to
# three of them: libsmbclient first checks the connection with an echo, then tears it down (a
# logoff that also times out), then reconnects. See OPERATION_TIMEOUT.
REQUEST_TIMEOUT = 8.0
OPERATION_TIMEOUT = 3 * REQUEST_TIMEOUT
# A client process that has not answered one request within STUCK_AFTER request timeouts (more than
# libsmbclient's own limits allow) is stuck: it is killed, and the call fails as a network error.
STUCK_AFTER = 4
LIST_STUCK_AFTER = 300.0  # seconds: a folder of a million files is fetched at opendir, in many requests
READ_CHUNK = 1 << 20  # open(): 1 MiB per read, which libsmbclient pipelines as SMB2 READs
MAX_IDLE = 32  # idle client processes kept per source
LOGOFF_WAIT = 1.0  # seconds a client process closed from the pool may take to log off
MAX_DEPTH = 64  # a server-side link loop would otherwise nest folders until paths overflow
CHILD = smb_child.__file__


class SmbCallError(OSError):
    """A failed SMB request; `connected` tells whether the session and tree connect stood.

    `of_process`: the client process itself failed (crashed, stuck), not the request to the NAS.
    """

    def __init__(self, code: int, message: str, connected: bool = False, of_process: bool = False):
        super().__init__(code, message)
        self.connected = connected
        self.of_process = of_process


class _Client:
    """One SMB client process (`smb_child.py`) and the socket to it. One thread at a time uses it."""

    def __init__(self, source: SmbSource):
        conn, timeout = source.conn, source.timeout
        exe = python_interpreter()
        if exe is None:
            raise ConfigError("direct SMB access needs a Python interpreter to start its client processes",
                              "Install python3, or mount the share and set the connection to a local folder.")
        ours, theirs = socket.socketpair()
        try:
            # -E -s -S: only the standard library and the script's folder (no PYTHON* variables, no site-packages)
            self.proc = subprocess.Popen([exe, "-E", "-s", "-S", CHILD, str(theirs.fileno()),
                                          str(source.idle_exit)],
                                         pass_fds=(theirs.fileno(),),
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self.sock = ours
        self.idle_since = time.monotonic()
        # The password goes through the socket, never on a command line other users could read.
        try:
            self.call(source.stuck_after, "connect", conn.Host, conn.Port, conn.Share, conn.Username, conn.Password,
                      conn.Domain, timeout)
        except SmbCallError as exc:
            if (self.proc.returncode or 0) > 0:  # it exited on an error of its own: it cannot start
                raise Internal(f"the SMB client process could not start: {exc.strerror}",
                               f"See Orthanc's log for its error ({exe} {CHILD}).") from exc
            raise  # killed by a signal, or stuck: like a crash later on, a network error (retried)

    def call(self, stuck_after: float, *request):
        """Send one request and return its answer; SMB failures raise `SmbCallError`."""
        try:
            # MSG_NOSIGNAL: a process that has ended must not make this one (Orthanc) receive SIGPIPE
            self.sock.sendall(smb_child.frame(request), socket.MSG_NOSIGNAL)
            answer = smb_child.recv(self.sock.fileno(), stuck_after)
        except TimeoutError:
            self.close(kill=True)
            raise SmbCallError(errno.ETIMEDOUT, f"the SMB client process did not answer within {stuck_after:g} s",
                               of_process=True) from None
        except (OSError, EOFError, ValueError):
            self.close(kill=True)
            ended = _exit_reason(self.proc.returncode)
            log.warning("NAS: an SMB client process ended (%s); its request fails as a network error", ended)
            raise SmbCallError(errno.ECONNABORTED, f"the SMB client process ended ({ended})",
                               of_process=True) from None
        if answer[0] == "ok":
            return answer[1]
        if answer[0] == "missing":
            self.close(kill=True)
            raise ConfigError(f"direct SMB access needs libsmbclient: {answer[1]}",
                              "Install it (Debian/Ubuntu: apt-get install libsmbclient), or mount the "
                              "share and set the connection to a local folder.")
        _, code, message, connected = answer
        raise SmbCallError(code, message, connected)

    def ended(self) -> bool:
        """Whether an idle process has ended (crashed, killed, or exited after IDLE_EXIT): it is not reused.

        An idle process never writes unasked, so its end of the socket being readable (EOF) means it is gone.
        """
        if self.proc.poll() is not None:
            return True
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))

    def close(self, kill: bool = False) -> None:
        _end([self], kill)


def _end(clients: list[_Client], kill: bool = False) -> None:
    """End client processes: at once (`kill`, e.g. when they may hang on the network), or by closing their
    sockets, when they log off and exit -- killed if that takes more than LOGOFF_WAIT."""
    for client in clients:
        client.sock.close()
    deadline = time.monotonic() + LOGOFF_WAIT
    for client in clients:
        if not kill:
            try:
                client.proc.wait(max(0.0, deadline - time.monotonic()))
                continue
            except subprocess.TimeoutExpired:
                pass
        client.proc.kill()  # nothing if it has ended
        client.proc.wait()


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


class SmbSource:
    """Files under `//Host/Share/Path`, read over SMB2/3 with libsmbclient in client processes."""

    def __init__(self, connection: Connection, timeout: float = REQUEST_TIMEOUT, threads: int = WALK_THREADS,
                 idle_exit: float = smb_child.IDLE_EXIT):
        if sys.platform == "win32":
            raise ConfigError("direct SMB access needs libsmbclient, which Windows does not have",
                              "Give the share as a UNC path in a local connection: "
                              '{"Type": "local", "Path": "\\\\\\\\nas\\\\share"}.')
        self.conn = connection
        self.timeout = timeout
        self.idle_exit = idle_exit  # seconds after which an idle client process exits
        self.stuck_after = STUCK_AFTER * timeout
        self.threads = max(1, threads)
        self.base = safe_relpath((connection.Path or "").strip("/\\"), windows=True)  # "/ct" and "\\ct" mean the folder ct
        port = "" if connection.Port == 445 else f":{connection.Port}"
        self.description = f"smb://{connection.Host}{port}/{connection.Share}/{self.base}".rstrip("/")
        self._idle: list[_Client] = []
        self._lock = threading.Lock()
        self._generation = 0  # bumped by close(): processes of an older generation are not reused
        self._sweeper: threading.Thread | None = None
        #: time.monotonic() of the last answer from the NAS (any call that did not fail on the network)
        self.last_answer = 0.0

    # -- connections ----------------------------------------------------------
    def _checkout(self, what: str) -> tuple[_Client, int]:
        """An idle client process from the pool, or a new one (it connects at its first request).

        A pooled process that ended while idle (a crash, a kill) is dropped here, not used: its failure
        must not cost the call one of its retries, however many of them the pool holds.
        """
        stale, ended = [], []
        try:
            with self._lock:
                generation = self._generation
                while self._idle:
                    client = self._idle.pop()
                    if client.ended():
                        ended.append(client)
                    elif self._fresh(client, time.monotonic()):
                        return client, generation
                    else:
                        stale.append(client)  # the sweeper was about to close it
        finally:
            _end(stale + ended)
            for client in ended:
                if client.proc.returncode != 0:  # 0: it exited after IDLE_EXIT, as it should
                    log.warning("NAS: an idle SMB client process ended (%s); it is replaced by a new one",
                                _exit_reason(client.proc.returncode))
        try:
            return _Client(self), generation
        except OSError as exc:
            raise self._error(exc, what) from exc

    def _checkin(self, client: _Client, generation: int) -> None:
        with self._lock:
            if generation == self._generation and len(self._idle) < MAX_IDLE:
                client.idle_since = time.monotonic()
                self._idle.append(client)
                if self._sweeper is None:
                    self._sweeper = threading.Thread(target=self._sweep, name="nas-smb-sweep", daemon=True)
                    self._sweeper.start()
                return
        client.close()

    def _fresh(self, client: _Client, now: float) -> bool:
        """Whether a pooled process is reused; one idle for half of `idle_exit` is closed instead."""
        return now - client.idle_since < self.idle_exit / 2

    def _sweep(self) -> None:
        """Close the client processes idle for half of `idle_exit`, every third of it, while the pool holds any.

        They would exit by themselves a little later, but as zombies until this process waits for them:
        closed from here, they log off and are waited for. Their own idle exit stays for when Orthanc dies.
        """
        while True:
            time.sleep(self.idle_exit / 3)
            with self._lock:
                now = time.monotonic()
                stale = [c for c in self._idle if not self._fresh(c, now)]
                self._idle = [c for c in self._idle if self._fresh(c, now)]
                done = not self._idle
                if done:
                    self._sweeper = None
            _end(stale)
            if done:
                return

    @contextmanager
    def _session(self, what: str) -> Iterator[_Client]:
        """A client process for one call; SMB failures come out as the matching `NasError`."""
        client, generation = self._checkout(what)
        try:
            yield client
        except OSError as exc:
            raise self._failed(exc, client, generation, what) from exc
        except BaseException:
            client.close(kill=True)
            raise
        self.last_answer = time.monotonic()
        self._checkin(client, generation)

    def _failed(self, exc: OSError, client: _Client, generation: int, what: str) -> NasError:
        """The error to raise for a failed call; the process goes back to the pool or is killed."""
        err = self._error(exc, what)
        if isinstance(err, NasNetworkError):
            client.close(kill=True)  # the connection may be half dead: the retry must start afresh
        else:
            self.last_answer = time.monotonic()  # a refusal is an answer
            self._checkin(client, generation)
        return err

    def close(self) -> None:
        """Drop every connection (e.g. after the credentials changed); later calls reconnect."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        _end(idle)

    # -- errors ---------------------------------------------------------------
    def _error(self, exc: OSError, what: str) -> NasError:
        c, code = self.conn, exc.errno
        connected = getattr(exc, "connected", False)
        where = f"{what} on //{c.Host}/{c.Share}"
        if code in NETWORK_ERRNOS or (code == errno.EINVAL and not connected):
            reason = exc.strerror or str(exc)
            if code == errno.ETIMEDOUT and not getattr(exc, "of_process", False):
                reason = f"no answer within {self.timeout:g} s"
            elif code == errno.EINVAL:
                reason = ("the host name does not resolve" if not _resolves(c.Host)
                          else "the connection could not be set up; is it an SMB2/3 server?")
            return NasNetworkError(f"cannot reach the NAS {c.Host}:{c.Port} ({reason}) for {what}",
                                   "Check that the NAS is on and reachable from this server (host name, port "
                                   f"{c.Port}, firewall). {self.mount_hint()}")
        if code in (errno.EACCES, errno.EPERM):
            if connected:
                return NasPermissionError(f"{where}: access denied",
                                          f"Give the NAS account {c.Username!r} read access to {what}.")
            return NasAuthError(f"the NAS {c.Host} refused the logon of {self._account()} to share {c.Share!r}",
                                "Check the user name, password and domain, and that this account may use "
                                f"the share. {self.mount_hint()}")
        if code in (errno.ENOENT, errno.ENOTDIR):
            if not connected:
                return NasNotFound(f"the NAS {c.Host} has no share {c.Share!r}",
                                   f"Check the share name (smbclient -L //{c.Host} -U {c.Username} lists them).")
            missing = "is not a folder" if code == errno.ENOTDIR else "not found"
            return NasNotFound(f"{where}: {missing}", "Check the path (Path in the connection settings).")
        return NasError(f"{where}: {exc.strerror or exc}", "See Orthanc's log; check the file on the NAS.")

    def _account(self) -> str:
        c = self.conn
        return f"{c.Domain}\\{c.Username}" if c.Domain else c.Username

    def mount_hint(self) -> str:
        """The local mount alternative, as a hint (never the password)."""
        return f"Or mount the share and index the mounted folder instead — {self.mount_commands()}"

    def mount_commands(self) -> str:
        """How to mount this share on Linux and on Windows, with this connection's values."""
        c = self.conn
        user = f"{c.Username},domain={c.Domain}" if c.Domain else c.Username
        port = f",port={c.Port}" if c.Port != 445 else ""
        win_user = f"{c.Domain}\\{c.Username}" if c.Domain else c.Username
        return (f"Linux: mount -t cifs //{c.Host}/{c.Share} /mnt/nas -o ro,username={user}{port} ; "
                f"Windows: net use N: \\\\{c.Host}\\{c.Share} /user:{win_user}")

    # -- paths ----------------------------------------------------------------
    def _path(self, rel: str) -> str:
        rel = safe_relpath(rel, windows=True)  # the SMB server separates folders with backslashes
        return f"{self.base}/{rel}".strip("/") if self.base else rel

    def _listdir(self, rel: str) -> list[tuple[str, bool, int, int]]:
        """(name, is_dir, size, mtime_ns) of each entry of a folder."""
        with self._session(f"folder /{self._path(rel)}") as client:
            return client.call(LIST_STUCK_AFTER, "list", self._path(rel))

    # -- Source contract ------------------------------------------------------
    def check_root(self) -> None:
        self._listdir("")

    def list_root(self, limit: int = 100, folder: str = "") -> list[str]:
        return sorted(name + ("/" if is_dir else "") for name, is_dir, _, _ in self._listdir(folder))[:limit]

    def walk(self, stop: threading.Event, scope: WalkScope | None = None, chunks: bool = False) -> Iterator:
        """See `Source.walk`."""
        def list_folder(rel: str) -> Iterator[FileEntry | WalkError | Folder]:
            prefix = f"{rel}/" if rel else ""
            for name, is_dir, size, mtime_ns in self._listdir(rel):  # the process is back in the pool by now
                if is_dir:
                    if prefix.count("/") < MAX_DEPTH:
                        yield Folder(prefix + name)
                    else:
                        yield WalkError(prefix + name, NasError(f"folder {prefix + name}: nested too deep",
                                                                "Check the NAS for a folder link loop."))
                else:
                    yield FileEntry(prefix + name, size, mtime_ns)

        scope = scope or WalkScope()
        return parallel_walk(scope.filter(list_folder), stop, self.threads, top=scope.folder, chunks=chunks)

    def read_head(self, path: str, size: int) -> bytes:
        """One request to the client process; three round trips to the NAS: CREATE, READ, CLOSE."""
        with self._session(f"file /{self._path(path)}") as client:
            return client.call(self.stuck_after, "head", self._path(path), size)

    def open(self, path: str) -> BinaryIO:
        """The whole file as a buffered stream, read 1 MiB at a time; close() closes the remote file."""
        what = f"file /{self._path(path)}"
        client, generation = self._checkout(what)  # not _session(): the file keeps the process until closed
        try:
            handle = client.call(self.stuck_after, "open", self._path(path))
        except OSError as exc:
            raise self._failed(exc, client, generation, what) from exc
        return io.BufferedReader(_SmbFile(self, client, generation, handle, what), READ_CHUNK)


class _SmbFile(io.RawIOBase):
    """A remote file opened for reading. It takes its client process out of the pool until closed."""

    def __init__(self, source: SmbSource, client: _Client, generation: int, handle: int, what: str):
        super().__init__()
        self._source, self._client, self._generation, self._handle, self._what = \
            source, client, generation, handle, what

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._client is None:
            raise ValueError("I/O operation on closed file")
        with memoryview(b) as mv, mv.cast("B") as view:
            try:
                data = self._client.call(self._source.stuck_after, "read", self._handle, min(len(view), READ_CHUNK))
            except OSError as exc:
                client, self._client = self._client, None
                super().close()
                raise self._source._failed(exc, client, self._generation, self._what) from exc
            view[:len(data)] = data
            return len(data)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.call(self._source.stuck_after, "close", self._handle)
            except OSError:
                client.close(kill=True)
            else:
                self._source._checkin(client, self._generation)
        super().close()


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
        return True
    except OSError:
        return False
