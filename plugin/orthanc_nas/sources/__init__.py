"""NAS sources: where the files come from. `open_source` picks one from the settings."""

from __future__ import annotations

import sys

from ..config import Connection
from ..errors import ConfigError
from .base import FileEntry, Source, WalkError
from .local import LocalSource

__all__ = ["FileEntry", "Source", "WalkError", "open_source"]


def is_unc(path: str) -> bool:
    return path.startswith(("\\\\", "//")) and len(path) > 2


def open_source(connection: Connection, enumerator: str = "auto") -> Source:
    """The source for a connection. Raises `ConfigError` when none is configured."""
    if not connection.configured:
        raise ConfigError("no NAS connection is configured",
                          "Set Nas.Connection in orthanc.json, or fill in the connection in the NAS panel.")
    if connection.Type == "smb":
        from .smb import SmbSource  # imported lazily: the SMB client is not needed for local folders

        return SmbSource(connection)
    if enumerator in ("robocopy", "powershell") or (enumerator == "auto" and sys.platform == "win32"
                                                    and is_unc(connection.Path)):
        from .windows import WindowsListingSource

        return WindowsListingSource(connection.Path, "robocopy" if enumerator == "auto" else enumerator)
    return LocalSource(connection.Path)
