"""The program of one SMB client process: one libsmbclient connection, used by one thread.

`SmbSource` (smb.py) never loads libsmbclient in its own process (Orthanc's): it starts
this file as a script, `python -E -s -S smb_child.py FD IDLE_EXIT`, one process per
connection it needs, and sends it requests on a socket pair. Why: Samba's client library keeps
global state (talloc stack frames, charset handles, its configuration) that Samba
4.17 -- Debian 12's -- does not guard between threads, and a fault in it takes the
whole process down. Used here from one thread, as Samba's own tools use it, that
race does not exist; and should the library crash or hang anyway, only this process
ends: the plugin sees a network error, retries on a fresh process and goes on.

Messages, both ways, are a 4-byte length and a `marshal` payload (tuples of str,
int, bytes) on raw file descriptors. Written by hand because only plain values
cross, and because imports are what a process costs: `multiprocessing.connection`
would take ~15 ms to import, `socket` 1.3 MB of private memory, in every process.

Requests and answers (`("ok", value)`, or `("error", errno, strerror, connected)`,
where `connected` says whether the session and tree connect were established):

    ("connect", host, port, share, username, password, domain, timeout)  -> None
    ("list", path)         -> [(name, is_dir, size, mtime_ns), ...]
    ("head", path, size)   -> the first `size` bytes: open, read, close in one request
    ("open", path)         -> a handle;   ("read", handle, size) -> bytes;   ("close", handle) -> None

A missing libsmbclient is answered `("missing", message)`. The process logs off
and exits when its socket closes, or after IDLE_EXIT seconds without a request
while it holds no open file.
"""

from __future__ import annotations

import errno
import marshal
import os
import select
import struct
import sys
import time

HEADER = struct.Struct("<I")
IDLE_EXIT = 60.0  # seconds, by default; SmbSource reuses an idle process only well before that
# libsmbclient's errnos for a server that did not answer, refused or dropped the connection
NETWORK_ERRNOS = {errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
                  errno.ENOTCONN, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN,
                  errno.EIO, errno.EAGAIN, errno.ENETRESET}


def frame(value) -> bytes:
    """A message as it goes on the socket."""
    data = marshal.dumps(value)
    return HEADER.pack(len(data)) + data


def send(fd: int, value) -> None:
    view = memoryview(frame(value))
    while view:
        view = view[os.write(fd, view):]


def recv(fd: int, timeout: float | None = None):
    """The next message. TimeoutError if it did not come whole within `timeout` seconds, EOFError if the
    other end closed the socket."""
    deadline = None if timeout is None else time.monotonic() + timeout
    (size,) = HEADER.unpack(_read_exactly(fd, HEADER.size, deadline))
    return marshal.loads(_read_exactly(fd, size, deadline))


def _read_exactly(fd: int, size: int, deadline: float | None) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    got = 0
    while got < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise TimeoutError(f"no message within the time limit ({got} of {size} bytes)")
        n = os.readv(fd, [view[got:]])
        if not n:
            raise EOFError("the other end closed the connection")
        got += n
    return buf


def _read(ctx, handle: int, size: int) -> bytes:
    buf = bytearray(size)
    got = 0
    with memoryview(buf) as view:
        while got < size and (n := ctx.readinto(handle, view[got:])):
            got += n
    del buf[got:]
    return bytes(buf)


def _head(ctx, path: str, size: int) -> bytes:
    """CREATE, READ (one per server max read size, 8 MiB on Samba), CLOSE: three round trips."""
    handle = ctx.open(path)
    try:
        data = _read(ctx, handle, size)
    except OSError as exc:
        if exc.errno not in NETWORK_ERRNOS:  # after a network error the process is dropped anyway
            _close_quietly(ctx, handle)
        raise
    ctx.close_file(handle)
    return data


def _close_quietly(ctx, handle: int) -> None:
    try:
        ctx.close_file(handle)
    except OSError:
        pass


def serve(fd: int, libsmbclient, idle_exit: float = IDLE_EXIT) -> None:
    """Answer requests until the socket closes or nothing comes for `idle_exit` seconds."""
    ctx = None
    open_files: set[int] = set()
    try:
        while True:
            try:
                request = recv(fd, None if open_files else idle_exit)
            except (OSError, EOFError, ValueError):  # idle too long, or the plugin closed or went away
                return
            op, args = request[0], request[1:]
            try:
                if op == "connect":
                    ctx = libsmbclient.Context(*args)
                    answer = None
                elif op == "list":
                    answer = [tuple(e) for e in ctx.listdir(*args)]
                elif op == "head":
                    answer = _head(ctx, *args)
                elif op == "open":
                    answer = ctx.open(*args)
                    open_files.add(answer)
                elif op == "read":
                    answer = _read(ctx, *args)
                elif op == "close":
                    open_files.discard(args[0])
                    answer = ctx.close_file(args[0])
                else:
                    raise ValueError(f"unknown request {op!r}")
            except libsmbclient.LibraryMissing as exc:
                send(fd, ("missing", str(exc)))
            except OSError as exc:
                connected = ctx.share_connected() if ctx is not None else False
                send(fd, ("error", exc.errno or 0, exc.strerror or str(exc), connected))
            else:
                send(fd, ("ok", answer))
    finally:
        if ctx is not None:
            ctx.free()  # log off


if __name__ == "__main__":
    import libsmbclient  # this file's folder is the script's first import path

    serve(int(sys.argv[1]), libsmbclient, float(sys.argv[2]))
