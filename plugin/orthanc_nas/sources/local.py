"""A local or mounted folder (or a UNC path on Windows): a parallel `os.scandir` walk.

`os.walk` lists one folder at a time and builds whole lists per folder; here the
shared `parallel_walk` lists several folders at once (on a mounted share most of
the time goes in round trips, during which the threads release the GIL), and
this module only says how to list one folder with `os.scandir`, streaming its
entries as they come.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from typing import BinaryIO

from ..errors import NasError, NasNetworkError, NasNotFound, NasPermissionError
from .base import FileEntry, WalkError
from .scope import WalkScope
from .walk import CHUNK, QUEUE_CHUNKS, WALK_THREADS, Folder, parallel_walk

__all__ = ["CHUNK", "QUEUE_CHUNKS", "WALK_THREADS", "LocalSource", "os_error", "safe_relpath"]

# errno values a mounted network share returns when the server, not the file, is in trouble
NETWORK_ERRNOS = {errno.EIO, errno.ETIMEDOUT, errno.EHOSTDOWN, errno.EHOSTUNREACH, errno.ENETDOWN,
                  errno.ENETUNREACH, errno.ECONNRESET, errno.ECONNABORTED, errno.ENOTCONN, errno.ESTALE}


def safe_relpath(path: str, windows: bool = os.name == "nt") -> str:
    """Refuse paths that would leave the NAS root.

    On Windows a backslash separates folders too and a drive (`C:`) would leave the root;
    elsewhere both are ordinary characters of a file name.
    """
    parts = (path.replace("\\", "/") if windows else path).split("/")
    if path.startswith("/") or ".." in parts or (windows and (path.startswith("\\") or ":" in parts[0])):
        raise NasNotFound(f"refused path outside the NAS root: {path!r}")
    return "/".join(p for p in parts if p not in ("", "."))


#: whether files can be opened component by component without following links (POSIX)
CONFINED_OPEN = bool(getattr(os, "O_NOFOLLOW", 0)) and os.open in os.supports_dir_fd


def open_beneath(root: str, rel: str) -> int:
    """A descriptor of the regular file `rel` under `root`, opened so that what is read is that file.

    Each folder of the path, then the file, is opened relative to the one before with O_NOFOLLOW: a
    symbolic link anywhere in the path (also one swapped in after indexing, after any check on the path's
    text) fails with ELOOP/ENOTDIR instead of leading out of the NAS root; a FIFO or device is refused
    without blocking. The caller compares the descriptor's size and mtime (fstat) with the index.
    """
    parts = rel.split("/") if rel else []
    if not parts:
        raise IsADirectoryError(errno.EISDIR, "the NAS root is not a file", rel)
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[:-1]:
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
            os.close(folder)
            folder = inner
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=folder)
    finally:
        os.close(folder)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", rel)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def os_error(exc: OSError, what: str) -> NasError:
    """Turn an OSError into the domain error that says what a person can do about it."""
    if isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT:
        return NasNotFound(f"{what}: not found")
    if isinstance(exc, PermissionError) or exc.errno in (errno.EACCES, errno.EPERM):
        return NasPermissionError(f"{what}: permission denied")
    if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a link: not followed, as in the walk
        return NasNotFound(f"{what}: a symbolic link on the way, not followed")
    if exc.errno == errno.ENOTDIR:  # a file where a folder was expected, or (O_DIRECTORY|O_NOFOLLOW) a link
        return NasNotFound(f"{what}: not a folder, or a symbolic link on the way (not followed)")
    if exc.errno in NETWORK_ERRNOS:
        return NasNetworkError(f"{what}: {exc.strerror or exc}")
    return NasError(f"{what}: {exc.strerror or exc}", "Check the file on the NAS.")


class LocalSource:
    """Files under a folder of this machine (a local disk or a mounted share)."""

    def __init__(self, root: str, threads: int = WALK_THREADS):
        self.root = os.path.abspath(root) if not root.startswith("\\\\") else root
        self.threads = max(1, threads)
        self.description = f"folder {self.root}"

    # -- root -----------------------------------------------------------------
    def check_root(self) -> None:
        try:
            st = os.stat(self.root)
        except OSError as exc:
            err = os_error(exc, f"NAS folder {self.root}")
            if isinstance(err, NasNotFound):
                err.hint = ("The folder does not exist: check the path, and that the share is mounted "
                            "(e.g. mount -t cifs //nas/dicom /mnt/nas -o ro,username=USER).")
            raise err from exc
        if not stat.S_ISDIR(st.st_mode):
            raise NasNotFound(f"NAS path {self.root} is not a folder", "Point Path at a folder.")
        try:
            with os.scandir(self.root) as it:
                next(it, None)
        except OSError as exc:
            raise os_error(exc, f"NAS folder {self.root}") from exc

    def list_root(self, limit: int = 100, folder: str = "") -> list[str]:
        self.check_root()
        names = []
        full = os.path.join(self.root, *safe_relpath(folder).split("/")) if folder else self.root
        try:
            it = os.scandir(full)
        except OSError as exc:
            raise os_error(exc, f"folder {folder}") from exc
        with it:
            for entry in it:
                names.append(entry.name + ("/" if self._enters(entry) else ""))
        return sorted(names)[:limit]

    @staticmethod
    def _enters(entry: os.DirEntry) -> bool:
        """Whether the walk lists this entry as a folder (marked `/` by `list_root`, what a cluster run splits
        by): as in `walk`, a symbolic link is not followed."""
        return entry.is_dir(follow_symlinks=False)

    # -- walk -----------------------------------------------------------------
    def walk(self, stop: threading.Event, scope: WalkScope | None = None, chunks: bool = False) -> Iterator:
        """See `Source.walk`."""
        seen_dirs: set[tuple[int, int]] = set()  # every folder listed, so links never list one twice
        seen_lock = threading.Lock()
        try:
            root_st = os.stat(self.root)
            seen_dirs.add((root_st.st_dev, root_st.st_ino))
        except OSError:
            pass

        def list_folder(rel: str) -> Iterator[FileEntry | WalkError | Folder]:
            prefix = f"{rel}/" if rel else ""
            full = os.path.join(self.root, rel) if rel else self.root
            try:
                with os.scandir(full) as it:
                    for entry in it:
                        try:
                            # Symbolic links are never followed (see `open_beneath`): one may lead out of
                            # the NAS root, and what one inside the root leads to is walked anyway.
                            if entry.is_dir(follow_symlinks=False):
                                # each folder is listed once (a bind mount may show one twice)
                                st = entry.stat(follow_symlinks=False)
                                key = (st.st_dev, st.st_ino)
                                with seen_lock:
                                    if key in seen_dirs:
                                        continue
                                    seen_dirs.add(key)
                                yield Folder(prefix + entry.name)
                            elif entry.is_file(follow_symlinks=False):
                                st = entry.stat(follow_symlinks=False)
                                yield FileEntry(prefix + entry.name, st.st_size, st.st_mtime_ns)
                        except OSError as exc:  # a file gone meanwhile
                            yield WalkError(prefix + entry.name, os_error(exc, prefix + entry.name))
            except OSError as exc:
                raise os_error(exc, f"folder {rel or '/'}") from exc

        scope = scope or WalkScope()
        return parallel_walk(scope.filter(list_folder), stop, self.threads, top=scope.folder, chunks=chunks)

    # -- reading --------------------------------------------------------------
    def _full(self, path: str) -> str:
        return os.path.join(self.root, *safe_relpath(path).split("/"))

    def read_head(self, path: str, size: int) -> bytes:
        try:
            with self._open(path, buffering=0) as fh:
                return fh.read(size)
        except OSError as exc:
            raise os_error(exc, path) from exc

    def open(self, path: str) -> BinaryIO:
        try:
            return self._open(path)
        except OSError as exc:
            raise os_error(exc, path) from exc

    def _open(self, path: str, buffering: int = -1) -> BinaryIO:
        if not CONFINED_OPEN:  # Windows: no O_NOFOLLOW nor dir_fd; UNC paths are resolved by the server
            return open(self._full(path), "rb", buffering=buffering)
        return os.fdopen(open_beneath(self.root, safe_relpath(path)), "rb", buffering=buffering)

    def close(self) -> None:
        pass
