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
int, bytes). Written by hand because only plain values cross, and the standard
library's `multiprocessing.connection` would cost every process ~15 ms of imports.

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
import socket
import struct
import sys

HEADER = struct.Struct("<I")
IDLE_EXIT = 60.0  # seconds, by default; SmbSource reuses an idle process only well before that
# libsmbclient's errnos for a server that did not answer, refused or dropped the connection
NETWORK_ERRNOS = {errno.ETIMEDOUT, errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE,
                  errno.ENOTCONN, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN,
                  errno.EIO, errno.EAGAIN}


def send(sock: socket.socket, value) -> None:
    data = marshal.dumps(value)
    sock.sendall(HEADER.pack(len(data)) + data)


def _recv_exactly(sock: socket.socket, size: int) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if not n:
            raise EOFError("the other end closed the connection")
        got += n
    return buf


def recv(sock: socket.socket):
    (size,) = HEADER.unpack(_recv_exactly(sock, HEADER.size))
    return marshal.loads(_recv_exactly(sock, size))


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


def serve(sock: socket.socket, libsmbclient, idle_exit: float = IDLE_EXIT) -> None:
    """Answer requests until the socket closes or nothing comes for `idle_exit` seconds."""
    ctx = None
    open_files: set[int] = set()
    try:
        while True:
            sock.settimeout(None if open_files else idle_exit)
            try:
                request = recv(sock)
            except (OSError, EOFError, ValueError):  # idle too long, or the plugin closed or went away
                return
            sock.settimeout(None)
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
                send(sock, ("missing", str(exc)))
            except OSError as exc:
                connected = ctx.share_connected() if ctx is not None else False
                send(sock, ("error", exc.errno or 0, exc.strerror or str(exc), connected))
            else:
                send(sock, ("ok", answer))
    finally:
        if ctx is not None:
            ctx.free()  # log off


if __name__ == "__main__":
    import libsmbclient  # this file's folder is the script's first import path

    serve(socket.socket(fileno=int(sys.argv[1])), libsmbclient, float(sys.argv[2]))
