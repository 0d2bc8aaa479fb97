"""The files of the NAS panel (`explorer-extension/`), served under `/nas/app/`.

Only files lying directly in that folder, with a known type, are served: a
name is a plain file name (no `/`, no `..`), so nothing else of the disk can be
reached. Every file goes out with a Content-Security-Policy that lets the panel
load and call nothing but its own origin: it keeps working on a closed hospital
network and cannot leak anything elsewhere.
"""

from __future__ import annotations

import os
import re

from .errors import NotFound, shown
from .http import Response

PANEL_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, os.pardir,
                                          "explorer-extension"))
EXPLORER_SCRIPT = "extend-explorer.js"  # injected into Orthanc Explorer

MIME_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; img-src 'self' data:; object-src 'none'; "
                                "base-uri 'self'; form-action 'self'; frame-ancestors 'self'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate, so an updated plugin's panel shows at once
}


def explorer_script() -> str | None:
    """The source of the script that puts the NAS button into Orthanc Explorer, or None without one."""
    try:
        return panel_file(EXPLORER_SCRIPT).body.decode("utf-8")
    except NotFound:
        return None


def panel_file(name: str, panel_dir: str = PANEL_DIR) -> Response:
    """One file of the panel, or NotFound."""
    ext = os.path.splitext(name)[1].lower()
    if not _NAME.match(name) or ".." in name or ext not in MIME_TYPES:
        raise NotFound(f"no file {shown(name)} in the NAS panel", "Open the panel at /nas/app/.")
    try:
        with open(os.path.join(panel_dir, name), "rb") as fh:
            body = fh.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        raise NotFound(f"no file {shown(name)} in the NAS panel", "Open the panel at /nas/app/.") from exc
    return Response(200, body, MIME_TYPES[ext], dict(HEADERS))
