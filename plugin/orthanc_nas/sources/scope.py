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

from .base import FileEntry, WalkError

#: NetApp, Synology, QNAP, Windows and Linux snapshot and recycle folders (SPEC "Configuration")
DEFAULT_EXCLUDED_FOLDERS = (".snapshot", "~snapshot", "@eaDir", "#recycle", "#snapshot", "$RECYCLE.BIN",
                            "System Volume Information", ".Trash-*")


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
        """Whether a walk of this scope would list `path` if it were there."""
        folders, _, name = path.rpartition("/")
        if self.folder and not (path.startswith(self.folder + "/")):
            return False
        return self.lists(name) and all(self.enters(part) for part in folders.split("/") if part)

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


def normalize_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    """`jpg`, `.JPG` → `.jpg`."""
    return tuple(sorted({"." + e.lower().lstrip(".") for e in extensions if e.strip(". ")}))
