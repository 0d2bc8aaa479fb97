"""Windows enumerators for a UNC path: `robocopy /L` or PowerShell, read as a stream.

Each lister runs as a child process (no shell) and prints one line per file while it goes; the
lines are read as they come (memory stays bounded) and each becomes a `FileEntry` or a
`WalkError`. Files are read through the file system (a UNC path opens with plain `open()`), so
everything but `walk` is `LocalSource`'s; `list_root` too, but it marks as folders only those the lister
enters (no junctions). Recorded outputs and the stand-in executable that
replays them for the tests: tests/fixtures/windows/README.md.
"""

from __future__ import annotations

import calendar
import collections
import contextlib
import io
import ntpath
import os
import queue
import re
import stat
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from ..errors import ConfigError, NasAuthError, NasError, NasNetworkError, NasNotFound, NasPermissionError
from .base import FileEntry, WalkError
from .local import LocalSource, safe_relpath
from .scope import WalkScope
from .walk import CHUNK, put_unless

if sys.platform == "win32":
    import _winapi
    import msvcrt

ROBOCOPY_THREADS = 16
ROOT_ENV = "ORTHANC_NAS_ROOT"  # PowerShell reads the root from here: no quoting of paths in a command
EXCLUDE_ENV = "ORTHANC_NAS_EXCLUDE"  # and the folder globs not entered, separated by | (never in a Windows name)
SKIP_ENV = "ORTHANC_NAS_SKIP"  # and the file extensions not listed, likewise
EPOCH_TICKS = 621_355_968_000_000_000  # .NET ticks (100 ns since 0001-01-01) at 1970-01-01 UTC

# One line per file: F <tab> length <tab> LastWriteTimeUtc ticks <tab> full path; one per folder it
# cannot list: E <tab> HRESULT <tab> error category <tab> folder <tab> message. `Get-ChildItem -Recurse`
# is not used because Windows PowerShell 5.1 follows junctions and folder links into loops; the script
# recurses itself and skips them, as robocopy's /XJ does. It writes UTF-8 through its own writer on the
# raw stdout: neither the console code page nor [Console]::OutputEncoding (tied to a console) matter.
# No double quote in it, so it survives Windows command-line quoting unchanged.
POWERSHELL_SCRIPT = " ".join(line.strip() for line in """
$ErrorActionPreference = 'Stop'; $t = [char]9;
$out = New-Object IO.StreamWriter([Console]::OpenStandardOutput(), (New-Object Text.UTF8Encoding $false), 65536);
$todo = New-Object Collections.Generic.Stack[string]; $todo.Push($env:ORTHANC_NAS_ROOT);
$xd = @($env:ORTHANC_NAS_EXCLUDE -split '[|]' | Where-Object { $_ }); $xf = @($env:ORTHANC_NAS_SKIP -split '[|]' | Where-Object { $_ });
while ($todo.Count) { $dir = $todo.Pop();
  try { Get-ChildItem -LiteralPath $dir -Force | ForEach-Object { $n = $_.Name;
      if ($_.PSIsContainer) { if (-not ($_.Attributes -band [IO.FileAttributes]::ReparsePoint) -and
          -not ($xd | Where-Object { $n -like $_ })) { $todo.Push($_.FullName) } }
      elseif (-not ($xf | Where-Object { $n.EndsWith($_, [StringComparison]::OrdinalIgnoreCase) })) {
        $out.WriteLine(('F', $_.Length, $_.LastWriteTimeUtc.Ticks, $_.FullName) -join $t) } } }
  catch { $out.WriteLine(('E', ('{0:X8}' -f $_.Exception.HResult), $_.CategoryInfo.Category, $dir,
      ($_.Exception.Message -replace '\\s+', ' ')) -join $t) } };
$out.Flush()
""".strip().split("\n"))

# Windows error codes (robocopy prints them; PowerShell's HRESULT 0x8007xxxx carries them)
WINDOWS_ERRORS: dict[int, tuple[type[NasError], str]] = {
    2: (NasNotFound, "not found"), 3: (NasNotFound, "path not found"),
    67: (NasNotFound, "network name (share) not found"),
    5: (NasPermissionError, "access denied"), 65: (NasPermissionError, "network access denied"),
    51: (NasNetworkError, "remote computer not listening"), 53: (NasNetworkError, "network path not found"),
    59: (NasNetworkError, "unexpected network error"), 64: (NasNetworkError, "network name no longer available"),
    121: (NasNetworkError, "timed out"), 1231: (NasNetworkError, "network unreachable"),
    1232: (NasNetworkError, "host unreachable"), 1236: (NasNetworkError, "connection aborted"),
    86: (NasAuthError, "wrong password"), 1219: (NasAuthError, "conflicting credentials"),
    1326: (NasAuthError, "logon failure"), 1330: (NasAuthError, "password expired"),
    1331: (NasAuthError, "account disabled"), 1909: (NasAuthError, "account locked out"),
}
POWERSHELL_CATEGORIES = {"PermissionDenied": 5, "ObjectNotFound": 2}  # errors without a Windows code

# "\t<class>\t\t<size> <yyyy/mm/dd hh:mm:ss>\t<full path>": the class column is blank with /NC (and would be
# localized text without it), the size right-aligned in 8 columns (longer numbers are not cut, so a big
# size may touch the tab before it). Published /TS captures put a space, not a tab, before the time;
# any run of spaces and tabs is accepted there. Only digits, the time's shape and the tab before the
# path are relied on.
_ROBOCOPY_FILE = re.compile(
    r"^(?:\D*?[\t ])?(\d+)[\t ]+(\d{4})/(\d\d)/(\d\d) (\d\d):(\d\d):(\d\d)\t(.+)$")
# "2024/03/18 14:02:11 ERROR 5 (0x00000005) Accessing Source Directory \\nas\x\": the words are
# localized ("FEHLER", "Zugriff auf ..."), the code twice (decimal, hex) and the path are not.
_ROBOCOPY_ERROR = re.compile(r"(\d+) \(0x([0-9A-Fa-f]{8})\) (.*)$")
_PATH_START = re.compile(r"\\\\|[A-Za-z]:\\")


def _plain(path: str) -> str:
    """Backslashes, and no long-path prefix (`\\\\?\\UNC\\server\\share` is `\\\\server\\share`)."""
    path = path.replace("/", "\\")
    if path.startswith("\\\\?\\UNC\\"):
        return "\\\\" + path[8:]
    return path[4:] if path.startswith("\\\\?\\") else path


def _source_arg(root: str) -> str:
    """The root as a lister argument: no trailing separator, except a drive's (`C:` alone means elsewhere)."""
    path = root.replace("/", "\\").rstrip("\\")
    return path + "\\" if path.endswith(":") else path


def _relative(full: str, root: str) -> str:
    """`full`, as a lister prints it, relative to `root` ('' for the root itself)."""
    full, base = _plain(full), _plain(root).rstrip("\\")
    if full[:len(base)].lower() != base.lower() or full[len(base):len(base) + 1] not in ("", "\\"):
        raise NasNotFound(f"listed path outside the NAS root: {full!r}")
    return safe_relpath(full[len(base):].lstrip("\\"), windows=True)


def windows_error(code: int, what: str, detail: str = "") -> NasError:
    """The domain error for a Windows error code (unknown codes give a plain `NasError`)."""
    cls, text = WINDOWS_ERRORS.get(code, (NasError, "error"))
    message = f"{what}: {detail or text}" + (f" (Windows error {code})" if code else "")
    return cls(message) if cls is not NasError else NasError(message, "Check the folder on the NAS.")


def _entry(full: str, size: int, mtime_ns: int, root: str) -> FileEntry | WalkError:
    try:
        return FileEntry(_relative(full, root), size, mtime_ns)
    except NasError as exc:
        return WalkError(full, exc)


def _error(code: int, full: str, root: str, detail: str = "") -> WalkError:
    try:
        where = _relative(full, root) or "/"
    except NasError:
        where = full
    return WalkError(where, windows_error(code, f"folder {where}", detail))


def parse_robocopy_line(line: str, root: str) -> FileEntry | WalkError | None:
    """A file line, an error line, or None (blank lines, message text, "ERROR: RETRY LIMIT EXCEEDED.").

    The /TS time (last write, to the second) is read as UTC: robocopy prints the file time as stored,
    unlike the date in front of ERROR lines, which is local (the fixtures' README says how to check).
    """
    if m := _ROBOCOPY_FILE.match(line):
        size, *stamp, full = m.groups()
        return _entry(full, int(size), calendar.timegm(tuple(map(int, stamp))) * 1_000_000_000, root)
    if (m := _ROBOCOPY_ERROR.search(line)) and int(m[1]) == int(m[2], 16):
        start = _PATH_START.search(m[3])
        return _error(int(m[1]), m[3][start.start():] if start else root, root)
    return None


def parse_powershell_line(line: str, root: str) -> FileEntry | WalkError | None:
    """An `F` (file) or `E` (folder error) line of `POWERSHELL_SCRIPT`, or None."""
    kind, _, rest = line.partition("\t")
    fields = rest.split("\t", 3)
    if kind == "F" and len(fields) == 3 and fields[0].isdigit() and fields[1].lstrip("-").isdigit():
        return _entry(fields[2], int(fields[0]), (int(fields[1]) - EPOCH_TICKS) * 100, root)
    if kind == "E" and len(fields) == 4 and re.fullmatch(r"[0-9A-Fa-f]{8}", fields[0]):
        hresult, category, folder, message = int(fields[0], 16), *fields[1:]
        code = hresult & 0xFFFF if hresult >> 16 == 0x8007 else POWERSHELL_CATEGORIES.get(category, 0)
        return _error(code, folder, root, message)
    return None


class _LogPipe:
    """The pipe robocopy's /UNILOG writes into, read while robocopy runs.

    Why not stdout: redirected, robocopy writes the OEM code page, and with /UNICODE a UTF-16 byte
    order mark followed by the same narrow text, so a name outside that code page (Japanese, emoji)
    comes out as '?'. /UNILOG writes exact UTF-16LE; pointed at a named pipe this process owns (one
    instance, local clients only), the listing streams without touching the disk. Elsewhere than
    Windows (only the test stand-in runs there) a FIFO plays the named pipe's part.
    `release()`, called once the child has exited, ends a reader still waiting for it to connect.
    """

    def __init__(self) -> None:
        if sys.platform == "win32":
            self.path = rf"\\.\pipe\orthanc-nas-{uuid.uuid4().hex}"
            self._handle = _winapi.CreateNamedPipe(
                self.path, _winapi.PIPE_ACCESS_INBOUND | _winapi.FILE_FLAG_FIRST_PIPE_INSTANCE,
                0x8,  # PIPE_REJECT_REMOTE_CLIENTS; byte mode, blocking
                1, 0, 1 << 16, 0, _winapi.NULL)
        else:
            self._dir = tempfile.mkdtemp(prefix="orthanc-nas-")
            self.path = os.path.join(self._dir, "unilog")
            os.mkfifo(self.path, 0o600)
            self._fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
            self._hold = os.open(self.path, os.O_WRONLY)  # a writer until release(): no early end
            os.set_blocking(self._fd, True)

    def reader(self) -> BinaryIO:
        """The read end, once robocopy has opened the pipe (or `release()` was called)."""
        if sys.platform == "win32":
            try:
                _winapi.ConnectNamedPipe(self._handle)
            except OSError as exc:  # 535: connected before we waited; 232: wrote and left already
                if exc.winerror not in (535, 232):
                    raise
            fd, self._handle = msvcrt.open_osfhandle(self._handle, os.O_RDONLY), None
        else:
            fd, self._fd = self._fd, None
        return open(fd, "rb")

    def release(self) -> None:
        if sys.platform == "win32":  # connect and leave: fails (pipe busy) when robocopy did connect
            with contextlib.suppress(OSError):
                _winapi.CloseHandle(_winapi.CreateFile(self.path, _winapi.GENERIC_WRITE, 0, _winapi.NULL,
                                                       _winapi.OPEN_EXISTING, 0, _winapi.NULL))
        elif (hold := self.__dict__.pop("_hold", None)) is not None:  # called from two threads: once
            os.close(hold)

    def close(self) -> None:
        if sys.platform == "win32":
            if self._handle is not None:  # reader() never took it
                _winapi.CloseHandle(self._handle)
            return
        self.release()
        if self._fd is not None:
            os.close(self._fd)
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self._dir)


def robocopy_command(executable: Sequence[str], root: str, log: str, scope: WalkScope | None = None) -> list[str]:
    """robocopy listing `root` into the pipe `log`, copying nothing; `scope`'s folders and extensions left out."""
    scope = scope or WalkScope()
    # never created: with /L robocopy writes nothing, and as it does not exist every file is listed
    nowhere = ntpath.join(tempfile.gettempdir(), f"orthanc-nas-nowhere-{uuid.uuid4().hex}")
    return [*executable, _source_arg(root), nowhere,
            "/L",  # list only: nothing copied, no file even opened
            "/E",  # every subfolder
            "/NJH", "/NJS", "/NDL", "/NC", "/NP",  # no header, summary, folder lines, class column, percentages
            "/BYTES", "/TS", "/FP",  # size in bytes, last write time, full path on each file line
            "/XJ",  # skip junctions and symbolic links: no loops, nothing listed twice
            "/XX",  # with /NC a destination-only file would print like a source file
            # no retries: in /L mode robocopy retries only listing a folder, which rarely heals (access
            # denied) and would repeat its ERROR line; the walk reports the folder, the next run relists it
            "/R:0", "/W:0",
            # /L copies nothing, so the threads can at most help the scan (how much depends on the robocopy
            # version); lines then come in any order, which the parser does not mind (each has the full path)
            f"/MT:{ROBOCOPY_THREADS}",
            f"/UNILOG:{log}",
            # folder names (wildcards allowed) never entered, files never listed
            *(["/XD", *scope.excluded_folders] if scope.excluded_folders else []),
            *(["/XF", *(f"*{ext}" for ext in scope.skipped_extensions)] if scope.skipped_extensions else [])]


def powershell_command(executable: Sequence[str]) -> list[str]:
    """PowerShell running `POWERSHELL_SCRIPT`; the root and the scope go in its environment (`lister_env`)."""
    return [*executable, "-NoProfile", "-NonInteractive", "-Command", POWERSHELL_SCRIPT]


def lister_env(root: str, scope: WalkScope) -> dict[str, str]:
    """The environment variables the PowerShell script reads: root, folders not entered, extensions not listed."""
    return {ROOT_ENV: _source_arg(root), EXCLUDE_ENV: "|".join(scope.excluded_folders),
            SKIP_ENV: "|".join(scope.skipped_extensions)}


def _chunks(items: Iterator, stop: threading.Event) -> Iterator[list]:
    """The lister's items in lists, handed over from a thread of their own; [] while none came for a moment."""
    out: queue.Queue = queue.Queue(maxsize=16)
    halt = threading.Event()  # the consumer went away
    done = object()

    def put(item) -> bool:
        return put_unless(out, item, halt.is_set)

    def pump() -> None:
        chunk: list = []
        try:
            for item in items:
                chunk.append(item)
                if len(chunk) >= CHUNK:
                    if not put(chunk):
                        return
                    chunk = []
            put(chunk)
        except BaseException as exc:  # the lister's own failure reaches the consumer
            put(exc)
        finally:
            items.close()
            put(done)

    threading.Thread(target=pump, name="nas-lister", daemon=True).start()
    try:
        while True:
            try:
                item = out.get(timeout=0.2)
            except queue.Empty:
                yield []
                continue
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        halt.set()


def _end(proc: subprocess.Popen) -> None:
    """Terminate the child if it still runs, and reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


class WindowsListingSource(LocalSource):
    """A UNC path (or any folder) listed by robocopy or PowerShell; files read like `LocalSource`'s."""

    def __init__(self, root: str, kind: str, executable: str | Sequence[str] | None = None):
        if kind not in ("robocopy", "powershell"):
            raise ConfigError(f"unknown Windows enumerator {kind!r}", 'Set "Enumerator" to "robocopy" or "powershell".')
        super().__init__(root)
        self.kind = kind
        system = os.environ.get("SystemRoot", r"C:\Windows")  # a full path: never a robocopy.exe in the cwd
        executable = executable or ntpath.join(system, "System32", *(
            ["robocopy.exe"] if kind == "robocopy" else ["WindowsPowerShell", "v1.0", "powershell.exe"]))
        self.executable = [executable] if isinstance(executable, str) else list(executable)
        self.description = f"folder {self.root} (listed by {kind})"

    @staticmethod
    def _enters(entry: os.DirEntry) -> bool:
        """`list_root` marks as a folder only what the lister enters: not a junction, nor any folder that is a
        reparse point (robocopy's /XJ, the script's ReparsePoint test). Python's `is_dir(follow_symlinks=False)`
        is true for a junction (only folder symbolic links count as links); a cluster run that split the NAS
        by such a folder would walk it as an item of its own, and list through it what one node never does
        (the folder it leads to, then twice).

        `st_file_attributes` (Windows only) comes with the folder's listing (FindNextFileW): no round trip.
        """
        if not entry.is_dir(follow_symlinks=False):
            return False
        attributes = getattr(entry.stat(follow_symlinks=False), "st_file_attributes", 0)
        return not attributes & stat.FILE_ATTRIBUTE_REPARSE_POINT

    def walk(self, stop: threading.Event, scope: WalkScope | None = None, chunks: bool = False) -> Iterator:
        """See `Source.walk`."""
        scope = scope or WalkScope()
        items = self._walk(stop, scope)
        return _chunks(items, stop) if chunks else items

    def _walk(self, stop: threading.Event, scope: WalkScope) -> Iterator[FileEntry | WalkError]:
        robocopy = self.kind == "robocopy"
        pipe = _LogPipe() if robocopy else None
        top = os.path.join(self.root, *scope.folder.split("/")) if scope.folder else self.root
        argv = robocopy_command(self.executable, top, pipe.path, scope) if robocopy else \
            powershell_command(self.executable)
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if robocopy else subprocess.PIPE,
                env={**os.environ, **lister_env(top, scope)},
                creationflags=getattr(subprocess, "CREATE_NO_WINDOW", 0))
        except OSError as exc:
            if pipe:
                pipe.close()
            raise ConfigError(f"cannot run {self.kind} ({argv[0]}): {exc.strerror or exc}",
                              'Set "Enumerator" to "scandir" (or another lister) in the "Nas" settings.') from exc
        tail: collections.deque[str] = collections.deque(maxlen=8)  # last lines not understood, for errors
        done = threading.Event()

        def drain(stream: BinaryIO) -> None:  # the other output, read so the child never blocks on it
            for raw in stream:
                if text := raw.decode("utf-8", "replace").strip():
                    tail.append(text)

        def watch() -> None:  # `stop` can come while the reader waits for a line
            while not done.is_set():
                try:
                    proc.wait(timeout=0.2)
                    break
                except subprocess.TimeoutExpired:
                    if stop.is_set():
                        _end(proc)
            if pipe:
                pipe.release()

        drainer = threading.Thread(target=drain, args=(proc.stdout if robocopy else proc.stderr,), daemon=True)
        watcher = threading.Thread(target=watch, daemon=True)
        drainer.start()
        watcher.start()
        parse = parse_robocopy_line if robocopy else parse_powershell_line
        failed: set[str] = set()  # folders already reported
        try:
            raw = pipe.reader() if pipe else proc.stdout
            with io.TextIOWrapper(raw, encoding="utf-16-le" if robocopy else "utf-8", errors="replace") as text:
                for line in text:
                    if stop.is_set():
                        return
                    line = line.rstrip("\r\n").lstrip("\ufeff")  # the byte order mark starts the first line
                    if (item := parse(line, self.root)) is None:
                        if line.strip():
                            tail.append(line.strip())
                        continue
                    if not scope.keeps(item):  # a lister that does not know the patterns' every form
                        continue
                    if isinstance(item, WalkError):
                        # robocopy prints a folder's ERROR line again on each retry ("Waiting 30 seconds...
                        # Retrying..." in between, if /R is not 0): the folder is reported once
                        if item.path in failed:
                            continue
                        failed.add(item.path)
                    yield item
            # robocopy exits with 8 or more whenever a folder failed, which its ERROR lines already said;
            # the PowerShell script catches its errors and exits 0, so any other code is a failure of its own
            code = proc.wait()
            drainer.join(timeout=5)
            if not stop.is_set() and (code >= 8 and not failed if robocopy else code != 0):
                yield WalkError("/", NasError(
                    f"{self.kind} stopped with exit code {code}" + (f": {' | '.join(tail)}" if tail else ""),
                    f'Check that {self.kind} can list {self.root}, or set "Enumerator" to "scandir".'))
        finally:
            done.set()
            _end(proc)
            watcher.join(timeout=5)
            drainer.join(timeout=5)
            if pipe:
                pipe.close()
