"""Where a connection set from the web may lead: `AllowedRoots` (folders) and `AllowedHosts` (SMB hosts).

An Orthanc user may use the NAS panel, but must not reach through it what Orthanc itself never gives a
REST user: any folder of the server (`/`, `/root`, `/proc/self`, as a listing from the connection test
or as files made shareable by indexing them) or any host and port of the network (the SMB connection
test answers open, refused or silent like a port scanner). Connections sent to `PUT /nas/config` and
`POST /nas/config/test` are therefore checked against these two lists, from orthanc.json only, before
the path or the network is touched. orthanc.json's own connection is always allowed: an administrator
set it.
"""

from __future__ import annotations

import ntpath
import os

from .config import ANY, Connection, Settings
from .errors import ConfigError

_HINT = ('An administrator can allow it in the "Nas" section of orthanc.json ({key}: a list, or "*" for any), '
         "then restart Orthanc.")


def check_web_connection(connection: Connection, settings: Settings, base: Connection,
                         where: str = "Connection") -> None:
    """ConfigError naming `<where>.Path` or `<where>.Host` unless the connection stays where it may.

    `base` is orthanc.json's own connection (always allowed, with the folders below its Path).
    """
    if connection.Type == "local":
        roots = settings.AllowedRoots
        if roots == ANY:
            return
        if base.Type == "local" and base.Path:
            roots = (*roots, base.Path)
        if not any(is_beneath(connection.Path, root) for root in roots):
            raise ConfigError(f"setting {where}.Path {connection.Path!r} is outside the folders that settings "
                              f"from the web may use ({', '.join(roots)})",
                              _HINT.format(key="AllowedRoots"), field=f"{where}.Path")
        return
    hosts = settings.AllowedHosts
    if hosts == ANY:
        return
    allowed = {h.lower() for h in hosts}
    if base.Type == "smb" and base.Host:
        allowed.add(base.Host.lower())
    if connection.Host.strip().lower() not in allowed:
        raise ConfigError(f"setting {where}.Host {connection.Host!r} is not one of the SMB hosts that settings "
                          f"from the web may use ({', '.join(sorted(allowed)) or 'none'})",
                          _HINT.format(key="AllowedHosts"), field=f"{where}.Host")


def is_beneath(path: str, root: str) -> bool:
    """Whether `path` is `root` or inside it, after `..` and symbolic links are resolved on both (a relative
    path from the working directory).

    UNC paths (`\\\\nas\\share\\...`) compare case-insensitively by their text, as Windows does.
    """
    if path.startswith("\\\\") or root.startswith("\\\\"):
        p, r = (ntpath.normcase(ntpath.normpath(x)) for x in (path, root))
        return p == r or p.startswith(r.rstrip("\\") + "\\")
    # a relative path is taken from the working directory, as the local source opens it (orthanc.json's
    # own "var/sample-nas" is then allowed); realpath reads links (lstat, readlink) but lists nothing:
    # /mnt/link -> / is not inside /mnt
    p, r = os.path.realpath(path), os.path.realpath(root)
    return p == r or p.startswith(r.rstrip(os.sep) + os.sep)
