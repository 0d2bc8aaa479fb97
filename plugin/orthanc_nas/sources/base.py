"""What every NAS source (local folder, SMB share, Windows enumerators) offers the indexer.

A source lists files as a stream and reads bytes of one file. Paths are always
relative to the NAS root, with `/` separators, whatever the source.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from ..errors import NasError


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file found by a walk; size and mtime come from the listing itself."""

    path: str
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class WalkError:
    """A folder (or file) the walk could not list; counted as an error, the walk goes on."""

    path: str
    error: NasError


class Source(Protocol):
    """The contract of a NAS source. Implementations must be safe to call from many threads."""

    #: e.g. "local folder /mnt/nas" or "smb://nas/dicom/ct" (never a password)
    description: str

    def check_root(self) -> None:
        """Raise a `NasError` (kind not_found, network, auth, permission) if the root cannot be listed."""

    def list_root(self, limit: int = 100, folder: str = "") -> list[str]:
        """Names in the root folder, or in `folder` below it (`/`-separated), folders ending with `/`, at most
        `limit`, sorted. Raises a `NasError` when the folder cannot be listed."""

    def walk(self, stop: threading.Event, scope=None, chunks: bool = False) -> Iterator:
        """Stream every file under the root. Memory stays bounded whatever the number of files.

        `scope` (a `scope.WalkScope`): only its folder, without its excluded folders and skipped
        extensions. With `chunks`, lists of items as they are handed over, and `[]` whenever none
        came for a moment. Stops early (without error) when `stop` is set.
        """

    def read_head(self, path: str, size: int) -> bytes:
        """The first `size` bytes of the file (fewer if it is shorter).

        Raises `NasNetworkError` for a transient network failure (the caller retries),
        `NasNotFound` if the file vanished, `NasPermissionError` if it cannot be read.
        """

    def open(self, path: str) -> BinaryIO:
        """A readable binary file object for the whole file (for zip streaming). Caller closes it."""

    def close(self) -> None:
        """Drop connections and sessions (after the credentials change, or when Orthanc stops)."""
