"""The `Nas` section of orthanc.json, validated once into frozen dataclasses.

An unknown key or a value of the wrong type raises `ConfigError` naming the key
(`Nas.Connection.Prot`), which stops the plugin while Orthanc starts: a
configuration error fails closed and loudly.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import ConfigError

CONNECTION_TYPES = ("local", "smb")
ENUMERATORS = ("auto", "scandir", "robocopy", "powershell")
DEFAULT_WORKERS = 12
MIN_WORKERS, MAX_WORKERS = 1, 64
SAVED_CONFIG_NAME = "nas-config.json"


@dataclass(frozen=True)
class Connection:
    Type: str = "local"
    Path: str = ""
    Host: str = ""
    Share: str = ""
    Username: str = ""
    Password: str = field(default="", repr=False)
    Domain: str = ""
    Port: int = 445

    @property
    def configured(self) -> bool:
        return bool(self.Path) if self.Type == "local" else bool(self.Host and self.Share)

    def public(self) -> dict:
        """The connection as answered by the routes: never the password."""
        data = asdict(self)
        data.pop("Password")
        data["PasswordSet"] = bool(self.Password)
        return data


@dataclass(frozen=True)
class ShareServer:
    Host: str = "127.0.0.1"
    Port: int = 8043
    PublicUrl: str | None = None

    def base_url(self) -> str:
        if self.PublicUrl:
            return self.PublicUrl.rstrip("/")
        host = "127.0.0.1" if self.Host in ("0.0.0.0", "") else self.Host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"http://{host}:{self.Port}"


@dataclass(frozen=True)
class Settings:
    Connection: Connection
    DataDirectory: str
    Workers: int = DEFAULT_WORKERS
    Enumerator: str = "auto"
    DefaultShareHours: float = 24
    MaxShareHours: float = 720
    ShareServer: ShareServer = ShareServer()

    def public(self) -> dict:
        """The settings in the shape of the orthanc.json section, without the password."""
        data = asdict(self)
        data["Connection"] = self.Connection.public()
        return data

    def with_connection(self, connection: Connection, workers: int | None = None) -> Settings:
        return replace(self, Connection=connection, Workers=self.Workers if workers is None else workers)


# key -> accepted JSON types
_CONNECTION_KEYS: dict[str, tuple[type, ...]] = {
    "Type": (str,), "Path": (str,), "Host": (str,), "Share": (str,),
    "Username": (str,), "Password": (str,), "Domain": (str,), "Port": (int,),
}
_SHARE_SERVER_KEYS: dict[str, tuple[type, ...]] = {"Host": (str,), "Port": (int,), "PublicUrl": (str, type(None))}
_TOP_KEYS: dict[str, tuple[type, ...]] = {
    "Connection": (dict,),
    "DataDirectory": (str,),
    "Workers": (int,),
    "Enumerator": (str,),
    "DefaultShareHours": (int, float),
    "MaxShareHours": (int, float),
    "ShareServer": (dict,),
}


def _check_object(obj: Any, keys: dict, where: str) -> None:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} must be a JSON object")
    for key, value in obj.items():
        if key not in keys:
            known = ", ".join(sorted(keys))
            raise ConfigError(f"unknown setting {where}.{key}", f"Known keys of {where}: {known}.")
        types = keys[key]
        # JSON booleans are ints in Python: refuse them where a number is expected.
        if isinstance(value, bool) or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else _TYPE_NAMES.get(t, t.__name__) for t in types)
            raise ConfigError(f"setting {where}.{key} must be {names}, not {json.dumps(value)[:60]}")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object"}


def parse_connection(raw: Any, where: str = "Nas.Connection") -> Connection:
    """Validate a `Connection` object (from orthanc.json, nas-config.json or a request body)."""
    _check_object(raw, _CONNECTION_KEYS, where)
    conn = Connection(**raw)
    if conn.Type not in CONNECTION_TYPES:
        raise ConfigError(f"setting {where}.Type must be one of {', '.join(CONNECTION_TYPES)}, not {conn.Type!r}")
    if conn.Type == "local" and not conn.Path:
        raise ConfigError(f"setting {where}.Path is required for a local connection",
                          "Set Path to the mounted NAS folder, e.g. /mnt/nas/dicom or \\\\nas\\dicom.")
    if conn.Type == "smb":
        for key in ("Host", "Share", "Username", "Password"):
            if not getattr(conn, key):
                raise ConfigError(f"setting {where}.{key} is required for an SMB connection")
    if not 0 < conn.Port < 65536:
        raise ConfigError(f"setting {where}.Port must be between 1 and 65535")
    return conn


def parse_workers(value: Any, where: str = "Nas.Workers") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_WORKERS <= value <= MAX_WORKERS:
        raise ConfigError(f"setting {where} must be an integer between {MIN_WORKERS} and {MAX_WORKERS}")
    return value


def parse_settings(section: Any, orthanc_config: dict | None = None) -> Settings:
    """Validate the `Nas` section. `orthanc_config` is Orthanc's whole configuration, for defaults."""
    orthanc_config = orthanc_config or {}
    section = {} if section is None else section
    _check_object(section, _TOP_KEYS, "Nas")

    data_dir = section.get("DataDirectory")
    if data_dir is None:
        storage = orthanc_config.get("StorageDirectory", "OrthancStorage")
        data_dir = os.path.join(storage, "nas")
    data_dir = os.path.abspath(data_dir)

    # No connection yet is allowed: it can be set from the NAS panel.
    connection = parse_connection(section["Connection"]) if "Connection" in section else Connection()

    workers = parse_workers(section.get("Workers", DEFAULT_WORKERS))
    enumerator = section.get("Enumerator", "auto")
    if enumerator not in ENUMERATORS:
        raise ConfigError(f"setting Nas.Enumerator must be one of {', '.join(ENUMERATORS)}, not {enumerator!r}")

    default_hours = section.get("DefaultShareHours", 24)
    max_hours = section.get("MaxShareHours", 720)
    if max_hours <= 0:
        raise ConfigError("setting Nas.MaxShareHours must be positive")
    if not 0 < default_hours <= max_hours:
        raise ConfigError("setting Nas.DefaultShareHours must be positive and at most Nas.MaxShareHours")

    raw_server = section.get("ShareServer", {})
    _check_object(raw_server, _SHARE_SERVER_KEYS, "Nas.ShareServer")
    default_host = "0.0.0.0" if orthanc_config.get("RemoteAccessAllowed", False) else "127.0.0.1"
    server = ShareServer(
        Host=raw_server.get("Host", default_host),
        Port=raw_server.get("Port", 8043),
        PublicUrl=raw_server.get("PublicUrl"),
    )
    if not 0 <= server.Port < 65536:
        raise ConfigError("setting Nas.ShareServer.Port must be between 0 and 65535")

    return Settings(
        Connection=connection,
        DataDirectory=data_dir,
        Workers=workers,
        Enumerator=enumerator,
        DefaultShareHours=default_hours,
        MaxShareHours=max_hours,
        ShareServer=server,
    )


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
    _check_object(saved, {"Connection": (dict,), "Workers": (int,)}, SAVED_CONFIG_NAME)
    connection = parse_connection(saved.get("Connection", {}), f"{SAVED_CONFIG_NAME}.Connection")
    workers = parse_workers(saved["Workers"], f"{SAVED_CONFIG_NAME}.Workers") if "Workers" in saved else None
    return settings.with_connection(connection, workers)


def save_connection(settings: Settings) -> None:
    """Write the connection (and Workers) to nas-config.json atomically, mode 0600."""
    os.makedirs(settings.DataDirectory, exist_ok=True)
    path = os.path.join(settings.DataDirectory, SAVED_CONFIG_NAME)
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"Connection": asdict(settings.Connection), "Workers": settings.Workers}, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
