"""What one walk covers: a folder of the NAS, minus the folders and file extensions left out.

`ExcludedFolders` are globs on a folder's name (`fnmatch`, case-insensitive as on SMB and Windows
shares): such a folder is never entered. `SkippedExtensions` end a file's name (case-insensitive):
such a file is never listed, so never read. A run removes from the index only files its walk
covered (`covers`): changing these settings never drops rows of files still on the NAS.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from ..errors import BadRequest
from .base import FileEntry, WalkError


@dataclass(frozen=True)
class WalkScope:
    """`folder`: relative to the NAS root, `/`-separated, "" for all of it."""

    folder: str = ""
    excluded_folders: tuple[str, ...] = ()
    skipped_extensions: tuple[str, ...] = ()  # lower case, with their dot

    def __post_init__(self) -> None:
        object.__setattr__(self, "_globs", tuple(g.lower() for g in self.excluded_folders))

    def enters(self, name: str) -> bool:
        """Whether a folder of this name is walked."""
        lowered = name.lower()
        return not any(fnmatch.fnmatchcase(lowered, g) for g in self._globs)

    def lists(self, name: str) -> bool:
        """Whether a file of this name is listed (and so read)."""
        return not name.lower().endswith(self.skipped_extensions) if self.skipped_extensions else True

    def covers(self, path: str) -> bool:
        """Whether a walk of this scope would list `path` if it were there (the scope's own folder is listed
        whatever its name: only the folders below it are checked)."""
        folders, _, name = path.rpartition("/")
        if self.folder and not (path.startswith(self.folder + "/")):
            return False
        below = folders[len(self.folder) + 1:] if self.folder else folders
        return self.lists(name) and all(self.enters(part) for part in below.split("/") if part)

    def filter(self, list_folder: Callable[[str], Iterable]) -> Callable[[str], Iterator]:
        """`list_folder` (see `walk.parallel_walk`) without the folders not entered and the files not listed."""
        from .walk import Folder

        def listed(rel: str) -> Iterator:
            items = list_folder(rel)
            try:
                for item in items:
                    if isinstance(item, Folder):
                        if self.enters(item.path.rpartition("/")[2]):
                            yield item
                    elif isinstance(item, WalkError) or self.lists(item.path.rpartition("/")[2]):
                        yield item
            finally:
                close = getattr(items, "close", None)
                if close is not None:
                    close()
        return listed

    def keeps(self, item: FileEntry | WalkError) -> bool:
        """For listers that print whole paths (robocopy, PowerShell): whether an item is in this scope."""
        return isinstance(item, WalkError) or self.covers(item.path)


def parse_folder(value) -> str:
    """A folder of the NAS given by a client (`POST /nas/index`'s `path`): relative to its root,
    `/`-separated, "" for all of it. BadRequest (400) for anything else: not a string, absolute,
    a drive, `..`, a backslash."""
    if not isinstance(value, str):
        raise BadRequest("field 'path' must be a string: a folder of the NAS relative to its root",
                         'For example {"path": "2024/11"}.', field="path")
    parts = [p for p in value.strip().split("/") if p not in ("", ".")]
    if value.startswith("/") or "\\" in value or ".." in parts or (parts and ":" in parts[0]):
        raise BadRequest(f"field 'path' must be a folder relative to the NAS root, not {value!r}",
                         'Give the folder as the NAS shows it under its root, e.g. {"path": "2024/11"}, '
                         "without a leading /, a drive, backslashes or '..'.", field="path")
    return "/".join(parts)
