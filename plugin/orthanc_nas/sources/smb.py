"""An SMB2/3 share reached directly with host/share/user/password, without a mount.

The client is libsmbclient (through the small ctypes binding in `libsmbclient.py`),
chosen by measurement over smbprotocol and pysmbc: see `bench/smb_clients.py`.

Connections: a libsmbclient context is one SMB connection and must not be used by
two threads at once. Contexts live in a pool: a call takes an idle one (or opens
a new one), uses it, and gives it back. So each thread uses a context of its own
while it works, an open file (which may outlive the call and be read from another
thread) keeps its context until closed, and worker threads that come and go do
not leave connections behind. After a network error the context is dropped, so
the next call (the indexer's retry) connects afresh; closing a dropped context
can itself wait on a hung server, so that happens on a background thread.

Errors come from libsmbclient's mapping of the server's NTSTATUS to errno. EACCES
alone does not say whether the logon or the file was refused: libsmbclient keeps
a server in its cache only once session setup and tree connect succeeded, so
`Context.share_connected()` after the failure tells the two apart (and likewise a
missing share from a missing folder for ENOENT).
"""

from __future__ import annotations

import errno
import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from ..config import Connection
from ..errors import ConfigError, NasAuthError, NasError, NasNetworkError, NasNotFound, NasPermissionError
from . import libsmbclient
from .base import FileEntry, WalkError
from .local import safe_relpath
from .walk import WALK_THREADS, Folder, parallel_walk

# Each SMB request (and the protocol negotiation on a new connection) gives up after this many
# seconds without an answer. A call on a pooled connection to a hung server may wait for up to
# three of them: libsmbclient first checks the connection with an echo, then tears it down (a
# logoff that also times out), then reconnects. See OPERATION_TIMEOUT.
REQUEST_TIMEOUT = 8.0
OPERATION_TIMEOUT = 3 * REQUEST_TIMEOUT
READ_CHUNK = 1 << 20  # open(): 1 MiB per read, which libsmbclient pipelines as SMB2 READs
MAX_IDLE = 32  # idle connections kept per source
MAX_DEPTH = 64  # a server-side link loop would otherwise nest folders until paths overflow

NETWORK_ERRNOS = {errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
                  errno.ENOTCONN, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN,
                  errno.EIO, errno.EAGAIN}


class SmbSource:
    """Files under `//Host/Share/Path`, read over SMB2/3 with libsmbclient."""

    def __init__(self, connection: Connection, timeout: float = REQUEST_TIMEOUT, threads: int = WALK_THREADS):
        try:
            libsmbclient.load()
        except libsmbclient.LibraryMissing as exc:
            raise ConfigError(f"direct SMB access needs libsmbclient: {exc}",
                              "Install it (Debian/Ubuntu: apt-get install libsmbclient), or mount the "
                              "share and set the connection to a local folder.") from exc
        self.conn = connection
        self.timeout = timeout
        self.threads = max(1, threads)
        self.base = safe_relpath((connection.Path or "").strip("/\\"), windows=True)  # "/ct" and "\\ct" mean the folder ct
        port = "" if connection.Port == 445 else f":{connection.Port}"
        self.description = f"smb://{connection.Host}{port}/{connection.Share}/{self.base}".rstrip("/")
        self._idle: list[libsmbclient.Context] = []
        self._lock = threading.Lock()
        self._generation = 0  # bumped by close(): contexts of an older generation are not reused
        #: time.monotonic() of the last answer from the NAS (any call that did not fail on the network)
        self.last_answer = 0.0

    # -- connections ----------------------------------------------------------
    def _checkout(self, what: str) -> tuple[libsmbclient.Context, int]:
        """An idle context from the pool, or a new one (it connects at its first call)."""
        with self._lock:
            generation = self._generation
            if self._idle:
                return self._idle.pop(), generation
        c = self.conn
        try:
            return libsmbclient.Context(c.Host, c.Port, c.Share, c.Username, c.Password, c.Domain,
                                        self.timeout), generation
        except OSError as exc:
            raise self._error(exc, None, what) from exc

    def _checkin(self, ctx: libsmbclient.Context, generation: int) -> None:
        with self._lock:
            if generation == self._generation and len(self._idle) < MAX_IDLE:
                self._idle.append(ctx)
                return
        _discard(ctx)

    @contextmanager
    def _session(self, what: str) -> Iterator[libsmbclient.Context]:
        """A context for one call; SMB failures come out as the matching `NasError`."""
        ctx, generation = self._checkout(what)
        try:
            yield ctx
        except OSError as exc:
            raise self._failed(exc, ctx, generation, what) from exc
        except BaseException:
            _discard(ctx)
            raise
        self.last_answer = time.monotonic()
        self._checkin(ctx, generation)

    def _failed(self, exc: OSError, ctx: libsmbclient.Context, generation: int, what: str) -> NasError:
        """The error to raise for a failed call; the context goes back to the pool or is dropped."""
        err = self._error(exc, ctx, what)
        if isinstance(err, NasNetworkError):
            _discard(ctx)  # the connection may be half dead: the retry must start afresh
        else:
            self.last_answer = time.monotonic()  # a refusal is an answer
            self._checkin(ctx, generation)
        return err

    def close(self) -> None:
        """Drop every connection (e.g. after the credentials changed); later calls reconnect."""
        with self._lock:
            self._generation += 1
            idle, self._idle = self._idle, []
        for ctx in idle:
            _discard(ctx)

    # -- errors ---------------------------------------------------------------
    def _error(self, exc: OSError, ctx: libsmbclient.Context | None, what: str) -> NasError:
        c, code = self.conn, exc.errno
        where = f"{what} on //{c.Host}/{c.Share}"
        if code in NETWORK_ERRNOS or (code == errno.EINVAL and ctx is not None and not ctx.share_connected()):
            reason = exc.strerror or str(exc)
            if code == errno.ETIMEDOUT:
                reason = f"no answer within {self.timeout:g} s"
            elif code == errno.EINVAL:
                reason = ("the host name does not resolve" if not _resolves(c.Host)
                          else "the connection could not be set up; is it an SMB2/3 server?")
            return NasNetworkError(f"cannot reach the NAS {c.Host}:{c.Port} ({reason}) for {what}",
                                   "Check that the NAS is on and reachable from this server (host name, port "
                                   f"{c.Port}, firewall). {self.mount_hint()}")
        connected = ctx is not None and ctx.share_connected()
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

    def _listdir(self, rel: str) -> list[libsmbclient.DirEntry]:
        with self._session(f"folder /{self._path(rel)}") as ctx:
            return ctx.listdir(self._path(rel))

    # -- Source contract ------------------------------------------------------
    def check_root(self) -> None:
        self._listdir("")

    def list_root(self, limit: int = 100) -> list[str]:
        return sorted(e.name + ("/" if e.is_dir else "") for e in self._listdir(""))[:limit]

    def walk(self, stop: threading.Event) -> Iterator[FileEntry | WalkError]:
        def list_folder(rel: str) -> Iterator[FileEntry | WalkError | Folder]:
            prefix = f"{rel}/" if rel else ""
            for e in self._listdir(rel):  # the context goes back to the pool before anything is yielded
                if e.is_dir:
                    if prefix.count("/") < MAX_DEPTH:
                        yield Folder(prefix + e.name)
                    else:
                        yield WalkError(prefix + e.name, NasError(f"folder {prefix + e.name}: nested too deep",
                                                                  "Check the NAS for a folder link loop."))
                else:
                    yield FileEntry(prefix + e.name, e.size, e.mtime_ns)

        return parallel_walk(list_folder, stop, self.threads)

    def read_head(self, path: str, size: int) -> bytes:
        """Three round trips: CREATE, READ (one per server max read size, 8 MiB on Samba), CLOSE."""
        buf = bytearray(size)
        with self._session(f"file /{self._path(path)}") as ctx:
            handle = ctx.open(self._path(path))
            got = 0
            with memoryview(buf) as view:
                try:
                    while got < size and (n := ctx.readinto(handle, view[got:])):
                        got += n
                except OSError as exc:
                    if exc.errno not in NETWORK_ERRNOS:  # after a network error the context is dropped
                        _close_quietly(ctx, handle)
                    raise
            ctx.close_file(handle)
        return bytes(buf[:got])

    def open(self, path: str) -> BinaryIO:
        """The whole file as a buffered stream, read 1 MiB at a time; close() closes the remote file."""
        what = f"file /{self._path(path)}"
        ctx, generation = self._checkout(what)  # not _session(): the file keeps the context until closed
        try:
            handle = ctx.open(self._path(path))
        except OSError as exc:
            raise self._failed(exc, ctx, generation, what) from exc
        return io.BufferedReader(_SmbFile(self, ctx, generation, handle, what), READ_CHUNK)


class _SmbFile(io.RawIOBase):
    """A remote file opened for reading. It takes its context out of the pool until closed."""

    def __init__(self, source: SmbSource, ctx: libsmbclient.Context, generation: int, handle: int, what: str):
        super().__init__()
        self._source, self._ctx, self._generation, self._handle, self._what = source, ctx, generation, handle, what

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._ctx is None:
            raise ValueError("I/O operation on closed file")
        with memoryview(b) as mv, mv.cast("B") as view:
            try:
                return self._ctx.readinto(self._handle, view[:READ_CHUNK])
            except OSError as exc:
                ctx, self._ctx = self._ctx, None
                super().close()
                raise self._source._failed(exc, ctx, self._generation, self._what) from exc

    def close(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            try:
                ctx.close_file(self._handle)
            except OSError:
                _discard(ctx)
            else:
                self._source._checkin(ctx, self._generation)
        super().close()


def _discard(ctx: libsmbclient.Context) -> None:
    """Free a context without making the caller wait on a hung server."""
    threading.Thread(target=ctx.free, name="nas-smb-close", daemon=True).start()


def _close_quietly(ctx: libsmbclient.Context, handle: int) -> None:
    try:
        ctx.close_file(handle)
    except OSError:
        pass


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
        return True
    except OSError:
        return False
