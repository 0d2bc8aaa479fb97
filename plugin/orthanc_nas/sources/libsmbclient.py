"""A thin ctypes binding to libsmbclient, Samba's SMB2/3 client library (`libsmbclient.so.0`).

Why not python3-smbc (pysmbc 1.0.23)? It only exposes `getdents` (name and type),
so sizes and mtimes would cost one stat round trip per file, and it collapses
"wrong password" and "access denied" into the same EACCES with no way to tell
them apart. libsmbclient itself has both answers: `readdirplus` returns size and
times from the directory listing it already fetched, and its server cache tells
whether the session and tree connect succeeded.

One `Context` is one SMB connection (with its session and tree connect). The plugin
uses this module only in SMB client processes (`smb_child.py`), each with one
context used by one thread: Samba 4.17 (Debian 12) keeps global state -- talloc
stack frames, charset handles -- unguarded between threads.

Errors are raised as `OSError` whose errno is libsmbclient's own mapping of the
server's NTSTATUS (ETIMEDOUT for a request that got no answer within the
timeout, ECONNABORTED for a dropped connection, EACCES, ENOENT, ...).
"""

from __future__ import annotations

import ctypes
import os
import sys
from ctypes import CFUNCTYPE, POINTER, c_char_p, c_int, c_size_t, c_ssize_t, c_uint, c_uint16, c_void_p

# Each SMB client process imports this module, and little else: tempfile, urllib.parse and typing would
# cost every process about 3 MB of private memory. Hence a configuration file in memory (memfd) and the
# URL quoting by hand (`_quote`).

FILE_ATTRIBUTE_DIRECTORY = 0x10

# The library reads the machine's smb.conf (and ~/.smb/smb.conf) unless given one: a Samba server's
# settings on this host must not change how the plugin talks to the NAS. NetBIOS name lookups
# (broadcasts, WINS) could stall a connection attempt for seconds: names go through DNS/hosts only.
# SMB1 is off, as in every current Samba and Windows.
CLIENT_CONF = """\
[global]
  client min protocol = SMB2_02
  client max protocol = SMB3
  name resolve order = host
  log level = 0
"""


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_long)]


class _FileInfo(ctypes.Structure):
    """`struct libsmb_file_info` from libsmbclient.h (the field order matters)."""

    _fields_ = [("size", ctypes.c_uint64), ("attrs", ctypes.c_uint16), ("uid", ctypes.c_uint32),
                ("gid", ctypes.c_uint32), ("btime_ts", _Timespec), ("mtime_ts", _Timespec),
                ("atime_ts", _Timespec), ("ctime_ts", _Timespec), ("name", c_char_p),
                ("short_name", c_char_p)]


# Prototypes of the per-context functions (smbc_getFunction*); use_errno keeps errno per call.
_OPENDIR = CFUNCTYPE(c_void_p, c_void_p, c_char_p, use_errno=True)
_READDIRPLUS = CFUNCTYPE(POINTER(_FileInfo), c_void_p, c_void_p, use_errno=True)
_CLOSE = CFUNCTYPE(c_int, c_void_p, c_void_p, use_errno=True)  # closedir has the same shape
_OPEN = CFUNCTYPE(c_void_p, c_void_p, c_char_p, c_int, c_uint, use_errno=True)
_READ = CFUNCTYPE(c_ssize_t, c_void_p, c_void_p, c_void_p, c_size_t, use_errno=True)
_LOG = CFUNCTYPE(None, c_void_p, c_int, c_char_p)
_GET_CACHED = CFUNCTYPE(c_void_p, c_void_p, c_char_p, c_char_p, c_char_p, c_char_p)
_AUTH = CFUNCTYPE(None, c_void_p, c_char_p, c_char_p, c_void_p, c_int, c_void_p, c_int, c_void_p, c_int)

_lib: ctypes.CDLL | None = None
_keep: list = []  # objects handed to the library for good: they must never be collected


class LibraryMissing(ImportError):
    """libsmbclient.so.0 is not installed on this machine."""


def load() -> ctypes.CDLL:
    """Load libsmbclient once per process and give it the private configuration."""
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libsmbclient.so.0", use_errno=True)
        except OSError as exc:
            raise LibraryMissing(f"libsmbclient is not installed ({exc})") from exc
        lib.smbc_new_context.restype = c_void_p
        lib.smbc_init_context.restype = c_void_p
        lib.smbc_init_context.argtypes = [c_void_p]
        lib.smbc_free_context.argtypes = [c_void_p, c_int]
        lib.smbc_setConfiguration.argtypes = [c_void_p, c_char_p]
        lib.smbc_setLogCallback.argtypes = [c_void_p, c_void_p, _LOG]
        for name in ("Opendir", "ReaddirPlus", "Closedir", "Open", "Read", "Close", "GetCachedServer"):
            fn = getattr(lib, f"smbc_getFunction{name}")
            fn.restype, fn.argtypes = c_void_p, [c_void_p]
        # The library's global set-up (smb.conf, charsets, debug) happens with its first context and
        # is torn down whenever the count of initialised contexts falls back to zero, then reloaded
        # from the machine's smb.conf. An anchor context, initialised and never freed, keeps it
        # alive; ours replaces the default configuration before anything connects.
        anchor = lib.smbc_new_context()
        _configure(lib, anchor)
        if not lib.smbc_init_context(anchor):
            raise OSError(ctypes.get_errno(), "libsmbclient: smbc_init_context failed")
        # The library's own messages (level 0: errors only) go to stderr (Orthanc's log), never stdout.
        forward = _LOG(lambda _p, _level, msg: print("orthanc-nas: libsmbclient:", msg.decode(
            "utf-8", "replace").strip(), file=sys.stderr, flush=True))
        lib.smbc_setLogCallback(anchor, None, forward)
        _keep.extend((anchor, forward))
        _lib = lib
    return _lib


def _configure(lib: ctypes.CDLL, ctx: int) -> None:
    """Give the library CLIENT_CONF: a file in memory, or a temporary file where /proc is missing."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("orthanc-nas-smbclient.conf")
        try:
            os.write(fd, CLIENT_CONF.encode())
            lib.smbc_setConfiguration(ctx, f"/proc/self/fd/{fd}".encode())
        finally:
            os.close(fd)
        return
    import tempfile

    fd, path = tempfile.mkstemp(prefix="orthanc-nas-smbclient-", suffix=".conf")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(CLIENT_CONF)
        lib.smbc_setConfiguration(ctx, path.encode())
    finally:
        os.unlink(path)


_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~/")


def _quote(text: str) -> str:
    """Percent-encode a path for an smb:// URL, as urllib.parse.quote(text, safe="/") does."""
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in text.encode("utf-8", "surrogateescape"))


def _fill(buf: int, size: int, value: bytes) -> None:
    """Copy a NUL-terminated string into a buffer libsmbclient handed to the auth callback."""
    data = value[: size - 1] + b"\0"
    ctypes.memmove(buf, data, len(data))


class Context:
    """One SMB connection to `//host:port/share` as one user, with a timeout on every request.

    `timeout` (seconds) bounds each request and the protocol negotiation; the TCP connect
    itself is bounded by libsmbclient at 20 s.
    """

    def __init__(self, host: str, port: int, share: str, username: str, password: str,
                 domain: str = "", timeout: float = 10.0):
        lib = load()
        self._lib = lib
        self.host, self.share = host, share
        self._user, self._workgroup = username.encode(), (domain or "WORKGROUP").encode()
        secret = password.encode()

        def auth(_ctx, _srv, _shr, wg, wglen, un, unlen, pw, pwlen):
            _fill(wg, wglen, self._workgroup)
            _fill(un, unlen, self._user)
            _fill(pw, pwlen, secret)

        self._auth = _AUTH(auth)  # kept referenced: libsmbclient calls it at each connection
        ctx = lib.smbc_new_context()
        if not ctx:
            raise MemoryError("smbc_new_context failed")
        lib.smbc_setOptionNoAutoAnonymousLogin(c_void_p(ctx), 1)  # a refused logon must fail, not go guest
        lib.smbc_setTimeout(c_void_p(ctx), int(timeout * 1000))
        lib.smbc_setPort(c_void_p(ctx), c_uint16(port))
        lib.smbc_setWorkgroup(c_void_p(ctx), c_char_p(self._workgroup))
        lib.smbc_setFunctionAuthDataWithContext(c_void_p(ctx), self._auth)
        if not lib.smbc_init_context(ctx):
            err = ctypes.get_errno()
            lib.smbc_free_context(ctx, 1)
            raise OSError(err, f"smbc_init_context: {os.strerror(err)}")
        # With the user set, a pooled connection is found again without asking the callback
        # (a Python call) at every operation.
        lib.smbc_setUser(c_void_p(ctx), c_char_p(self._user))
        self._ctx = ctx
        self._opendir = _OPENDIR(lib.smbc_getFunctionOpendir(ctx))
        self._readdirplus = _READDIRPLUS(lib.smbc_getFunctionReaddirPlus(ctx))
        self._closedir = _CLOSE(lib.smbc_getFunctionClosedir(ctx))
        self._open = _OPEN(lib.smbc_getFunctionOpen(ctx))
        self._read = _READ(lib.smbc_getFunctionRead(ctx))
        self._close = _CLOSE(lib.smbc_getFunctionClose(ctx))
        self._cached = _GET_CACHED(lib.smbc_getFunctionGetCachedServer(ctx))
        host_part = f"[{host}]" if ":" in host and not host.startswith("[") else host
        self._base = f"smb://{host_part}/{_quote(share).replace('/', '%2F')}"

    def url(self, path: str) -> bytes:
        """`smb://host/share/path` with the path percent-encoded (libsmbclient decodes URLs)."""
        return f"{self._base}/{_quote(path)}".encode()

    @staticmethod
    def _fail(what: str, path: str) -> OSError:
        err = ctypes.get_errno()
        return OSError(err, os.strerror(err), f"{what} {path}".strip())

    def listdir(self, path: str) -> list[tuple[str, bool, int, int]]:
        """(name, is_dir, size, mtime_ns) of every entry of a folder (without . and ..), from the listing itself.

        libsmbclient fetches the whole folder at opendir (QUERY_DIRECTORY with full file
        information); readdirplus only walks that list, with no further round trip.
        """
        handle = self._opendir(self._ctx, self.url(path))
        if not handle:
            raise self._fail("opendir", path)
        entries = []
        try:
            while True:
                info = self._readdirplus(self._ctx, handle)
                if not info:
                    break
                fi = info.contents
                name = fi.name.decode("utf-8", "surrogateescape")
                if name in (".", ".."):
                    continue
                mtime = fi.mtime_ts.tv_sec * 1_000_000_000 + fi.mtime_ts.tv_nsec
                entries.append((name, bool(fi.attrs & FILE_ATTRIBUTE_DIRECTORY), fi.size, mtime))
        finally:
            self._closedir(self._ctx, handle)
        return entries

    def open(self, path: str) -> int:
        """A read-only handle on a file (one CREATE round trip)."""
        handle = self._open(self._ctx, self.url(path), os.O_RDONLY, 0)
        if not handle:
            raise self._fail("open", path)
        return handle

    def readinto(self, handle: int, view: memoryview) -> int:
        """Read into a writable byte view, as much as fits; returns the count (0 at the end).

        libsmbclient splits a large read into pipelined SMB2 READs of the server's maximum size.
        """
        size = len(view)
        done = self._read(self._ctx, handle, (ctypes.c_char * size).from_buffer(view), size)
        if done < 0:
            raise self._fail("read", "")
        return done

    def close_file(self, handle: int) -> None:
        if self._close(self._ctx, handle) < 0:
            raise self._fail("close", "")

    def share_connected(self) -> bool:
        """Whether this context holds an established session and tree connect to the share.

        libsmbclient caches a server only after session setup and tree connect both
        succeeded: after a failure, an uncached server means the logon or the share
        was refused, a cached one that the file or folder itself was.
        """
        return bool(self._cached(self._ctx, self.host.encode(), self.share.encode(), self._workgroup,
                                 self._user))

    def free(self) -> None:
        """Close the connection. May block up to two timeouts when the server hangs."""
        ctx, self._ctx = self._ctx, None
        if ctx:
            self._lib.smbc_free_context(ctx, 1)
