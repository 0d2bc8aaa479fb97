"""Settings from the web: what `PUT /nas/config` may change, and `nas-config.json`, where it is kept.

Only `Connection` and `Workers` change from the web; the rest of the `Nas` section is orthanc.json's.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import asdict
from typing import Any

from .config import TOP_KEYS, Connection, Settings, check_object, parse_connection, parse_workers
from .errors import ConfigError

SAVED_CONFIG_NAME = "nas-config.json"
#: what the web (PUT /nas/config) may change; the rest of the section is set in orthanc.json only
WEB_KEYS = ("Connection", "Workers")
_IDENTITY = ("Host", "Port", "Username", "Domain")  # who the saved password belongs to


def parse_web_connection(raw: Any, current: Connection, where: str = "Connection") -> Connection:
    """Validate a connection sent from the web (NAS panel, REST); ConfigError naming the field otherwise.

    `PasswordSet`, which GET /nas/config adds, is ignored. A missing or empty `Password` keeps the saved
    one, but only for the same Host, Port, Username and Domain: a saved password is never handed to a
    server (or another service of the same server) or an account other than the one it was saved for.
    """
    if not isinstance(raw, dict):
        return parse_connection(raw, where)  # refused, naming `where`
    raw = {k: v for k, v in raw.items() if k != "PasswordSet"}
    if not raw.get("Password") and raw.get("Type") == "smb" and current.Type == "smb" and current.Password:
        defaults = {"Port": Connection.Port}
        if all(str(raw.get(k, defaults.get(k, ""))).strip().lower() == str(getattr(current, k)).strip().lower()
               for k in _IDENTITY):
            raw["Password"] = current.Password
        else:
            raise ConfigError(f"setting {where}.Password is required: the saved password belongs to another "
                              "host, port, user or domain", "Type the password of this account again.",
                              field=f"{where}.Password")
    return parse_connection(raw, where)


def parse_web_settings(body: dict, current: Settings) -> Settings:
    """Validate a `PUT /nas/config` body into the new settings; ConfigError naming the field otherwise.

    The body holds `Connection` and optionally `Workers`. The section's other keys are accepted only
    unchanged, so that the answer of GET /nas/config can be sent back as it is.
    """
    unknown = sorted(set(body) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                          "The body holds Connection and optionally Workers.", field=unknown[0])
    public = current.public()
    for key in sorted(set(body) - set(WEB_KEYS)):
        if body[key] != public[key]:
            raise ConfigError(f"setting {key} cannot be changed from the web",
                              f'Change {key} in the "Nas" section of orthanc.json, then restart Orthanc.',
                              field=key)
    if "Connection" not in body:
        raise ConfigError("setting Connection is required",
                          'Send the whole connection, e.g. {"Connection": {"Type": "local", "Path": "/mnt/nas"}}.',
                          field="Connection")
    connection = parse_web_connection(body["Connection"], current.Connection)
    workers = parse_workers(body["Workers"], "Workers") if "Workers" in body else None
    return current.with_connection(connection, workers)


def load_saved_connection(settings: Settings) -> Settings:
    """Apply `<DataDirectory>/nas-config.json` (saved from the web) over the orthanc.json connection."""
    path = os.path.join(settings.DataDirectory, SAVED_CONFIG_NAME)
    try:
        with open(path, encoding="utf-8") as fh:
            saved = json.load(fh)
    except FileNotFoundError:
        return settings
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}", "Fix or delete the file; it is rewritten when "
                          "the connection is saved from the NAS panel.") from exc
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    check_object(saved, {"Connection": (dict,), "Workers": (int,)}, SAVED_CONFIG_NAME)
    connection = parse_connection(saved.get("Connection", {}), f"{SAVED_CONFIG_NAME}.Connection")
    workers = parse_workers(saved["Workers"], f"{SAVED_CONFIG_NAME}.Workers") if "Workers" in saved else None
    return settings.with_connection(connection, workers)


def save_connection(settings: Settings, *, include_workers: bool = True) -> None:
    """Write the connection (and Workers) to nas-config.json atomically, mode 0600.

    Without `include_workers`, Workers stays out of the file and orthanc.json's value keeps applying.
    The password is never in a file anyone else may read, not even for a moment: the temporary file
    is created 0600 (never reused), then renamed over the old one.
    """
    os.makedirs(settings.DataDirectory, exist_ok=True)
    path = os.path.join(settings.DataDirectory, SAVED_CONFIG_NAME)
    tmp = f"{path}.tmp{os.getpid()}.{threading.get_ident()}"
    saved: dict[str, Any] = {"Connection": asdict(settings.Connection)}
    if include_workers:
        saved["Workers"] = settings.Workers
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a crash: O_EXCL below must create the file anew, with our mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(saved, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
