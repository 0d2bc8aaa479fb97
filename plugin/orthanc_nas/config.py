"""The `Nas` section of orthanc.json, validated once into frozen dataclasses.

An unknown key or a value of the wrong type raises `ConfigError` naming the key
(`Nas.Connection.Prot`), which stops the plugin while Orthanc starts: a
configuration error fails closed and loudly.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import threading
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import ConfigError
from .schedule import parse_schedule
from .store import POSTGRESQL, SQLITE, DatabaseSettings
from .throttle import Throttle, parse_throttle

CONNECTION_TYPES = ("local", "smb")
ENUMERATORS = ("auto", "scandir", "robocopy", "powershell")
DEFAULT_WORKERS = 12
MIN_WORKERS, MAX_WORKERS = 1, 64
SAVED_CONFIG_NAME = "nas-config.json"
#: NetApp, Synology, QNAP, Windows and Linux snapshot and recycle folders (SPEC "Configuration")
DEFAULT_EXCLUDED_FOLDERS = (".snapshot", "~snapshot", "@eaDir", "#recycle", "#snapshot", "$RECYCLE.BIN",
                            "System Volume Information", ".Trash-*")
SMB_REQUIRED = ("Host", "Share", "Username", "Password")
ANY = "*"
#: the local folders settings from the web may use by default: the usual mount points (any UNC path on Windows)
DEFAULT_ALLOWED_ROOTS = ("\\\\",) if os.name == "nt" else ("/mnt", "/media", "/srv")
_SMB_FIELD_HELP = {
    "Host": "the NAS's name or IP address, e.g. nas.hospital.local or 10.0.0.12.",
    "Share": "the name of the shared folder on the NAS, e.g. dicom (as in \\\\nas\\dicom).",
    "Username": "an account of the NAS allowed to read the share.",
    "Password": "the password of that account.",
}


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

    def describe(self) -> str:
        """Where the files are, for a log line: a folder, or //host:port/share/path as user (no password)."""
        if self.Type == "local":
            return f"folder {self.Path}"
        user = f"{self.Domain}\\{self.Username}" if self.Domain else self.Username
        return f"//{self.Host}:{self.Port}/{self.Share}/{self.Path.strip('/')}".rstrip("/") + f" as {user}"


@dataclass(frozen=True)
class ShareServer:
    Host: str = "127.0.0.1"
    Port: int = 8043
    PublicUrl: str | None = None
    #: the address of a reverse proxy in front of the listener: for its requests, the client is the last
    #: address of X-Forwarded-For (the audit records it, the 429 limiter counts it); None: no proxy trusted
    TrustedProxy: str | None = None

    def base_url(self) -> str:
        if self.PublicUrl:
            return self.PublicUrl.rstrip("/")
        host = "127.0.0.1" if self.Host in ("0.0.0.0", "") else self.Host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"http://{host}:{self.Port}"


@dataclass(frozen=True)
class DicomServer:
    """The NAS as a DICOM query/retrieve node (see `orthanc_nas.dicom`)."""

    Enabled: bool = False
    AET: str = "NAS"
    Port: int = 4243
    Host: str = "127.0.0.1"
    #: None: the AE titles and hosts of Orthanc's DicomModalities; "*": anyone; else [{"AET", "Host"}, ...]
    AllowedCallers: str | list | None = None
    #: destinations of C-MOVE besides Orthanc's modalities: {"AET": ["host", port]}
    Destinations: dict = field(default_factory=dict)
    MaxAssociations: int = 8
    RegisterInOrthanc: bool = True


@dataclass(frozen=True)
class Settings:
    Connection: Connection
    DataDirectory: str
    Workers: int = DEFAULT_WORKERS
    Enumerator: str = "auto"
    DefaultShareHours: float = 24
    MaxShareHours: float = 720
    ShareServer: ShareServer = ShareServer()
    Schedule: str | None = None  # a cron expression: incremental runs started by the plugin
    Throttle: Throttle | None = None
    ExcludedFolders: tuple[str, ...] = DEFAULT_EXCLUDED_FOLDERS  # folder name globs never walked
    SkippedExtensions: tuple[str, ...] = ()  # file name endings never read, lower case with their dot
    DicomServer: DicomServer = DicomServer()
    #: folders (with their subfolders) a connection saved or tested from the web may use, or "*"
    AllowedRoots: tuple[str, ...] | str = DEFAULT_ALLOWED_ROOTS
    #: SMB hosts a connection saved or tested from the web may reach, or "*"
    AllowedHosts: tuple[str, ...] | str = ANY
    #: where the index, shares and audits live: SQLite files in DataDirectory, or a PostgreSQL database
    Database: DatabaseSettings = DatabaseSettings()
    #: None (keep) or hours after which instances the plugin imported into Orthanc are deleted from it again
    ImportRetentionHours: float | None = None

    def public(self) -> dict:
        """The settings in the shape of the orthanc.json section, without the password."""
        data = asdict(self)
        data["Connection"] = self.Connection.public()
        data["Database"] = self.Database.public()
        data["ExcludedFolders"], data["SkippedExtensions"] = list(self.ExcludedFolders), list(self.SkippedExtensions)
        for key in ("AllowedRoots", "AllowedHosts"):
            data[key] = data[key] if data[key] == ANY else list(data[key])
        return data

    def with_connection(self, connection: Connection, workers: int | None = None) -> Settings:
        return replace(self, Connection=connection, Workers=self.Workers if workers is None else workers)


# key -> accepted JSON types
_CONNECTION_KEYS: dict[str, tuple[type, ...]] = {
    "Type": (str,), "Path": (str,), "Host": (str,), "Share": (str,),
    "Username": (str,), "Password": (str,), "Domain": (str,), "Port": (int,),
}
_SHARE_SERVER_KEYS: dict[str, tuple[type, ...]] = {"Host": (str,), "Port": (int,), "PublicUrl": (str, type(None)),
                                                   "TrustedProxy": (str, type(None))}
_DICOM_SERVER_KEYS: dict[str, tuple[type, ...]] = {
    "Enabled": (bool,), "AET": (str,), "Port": (int,), "Host": (str, type(None)),
    "AllowedCallers": (str, list, type(None)), "Destinations": (dict,), "MaxAssociations": (int,),
    "RegisterInOrthanc": (bool,),
}
_TOP_KEYS: dict[str, tuple[type, ...]] = {
    "Connection": (dict,),
    "DataDirectory": (str,),
    "Workers": (int,),
    "Enumerator": (str,),
    "DefaultShareHours": (int, float),
    "MaxShareHours": (int, float),
    "ShareServer": (dict,),
    "Schedule": (str, type(None)),
    "Throttle": (dict, type(None)),
    "ExcludedFolders": (list,),
    "SkippedExtensions": (list,),
    "DicomServer": (dict,),
    "AllowedRoots": (list, str),
    "AllowedHosts": (list, str),
    "Database": (dict,),
    "ImportRetentionHours": (int, float, type(None)),
}
_DATABASE_KEYS: dict[str, tuple[type, ...]] = {"Type": (str,), "Url": (str,), "Password": (str,)}


def _check_object(obj: Any, keys: dict, where: str) -> None:
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} must be a JSON object", field=where)
    for key, value in obj.items():
        if key not in keys:
            known = ", ".join(sorted(keys))
            raise ConfigError(f"unknown setting {where}.{key}", f"Known keys of {where}: {known}.",
                              field=f"{where}.{key}")
        types = keys[key]
        # JSON booleans are ints in Python: refuse them where a number is expected.
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            names = " or ".join("null" if t is type(None) else _TYPE_NAMES.get(t, t.__name__) for t in types)
            raise ConfigError(f"setting {where}.{key} must be {names}, not {json.dumps(value)[:60]}",
                              field=f"{where}.{key}")


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object", list: "a list",
               bool: "true or false"}


def normalize_extensions(extensions: tuple[str, ...]) -> tuple[str, ...]:
    """`jpg`, `.JPG` → `.jpg`, in the order given, once each."""
    return tuple(dict.fromkeys("." + e.lower().strip().lstrip(".") for e in extensions))


def parse_names(value: list, where: str) -> tuple[str, ...]:
    """A list of non-empty strings (ExcludedFolders, SkippedExtensions)."""
    for item in value:
        if not isinstance(item, str) or not item.strip() or "/" in item or "\\" in item:
            raise ConfigError(f"setting {where} must list names (strings without / or \\), not {json.dumps(item)[:60]}",
                              field=where)
    return tuple(value)


def parse_allowed(value: Any, where: str) -> tuple[str, ...] | str:
    """`"*"` or a list of non-empty strings (AllowedRoots, AllowedHosts)."""
    if value == ANY:
        return ANY
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(f'setting {where} must be "*" or a list of non-empty strings', field=where)
    return tuple(v.strip() for v in value)


def parse_connection(raw: Any, where: str = "Nas.Connection") -> Connection:
    """Validate a `Connection` object (from orthanc.json, nas-config.json or a request body)."""
    _check_object(raw, _CONNECTION_KEYS, where)
    conn = Connection(**raw)
    if conn.Type not in CONNECTION_TYPES:
        raise ConfigError(f"setting {where}.Type must be one of {', '.join(CONNECTION_TYPES)}, not {conn.Type!r}",
                          field=f"{where}.Type")
    if conn.Type == "local" and not conn.Path.strip():
        raise ConfigError(f"setting {where}.Path is required for a local connection",
                          "Set Path to the mounted NAS folder, e.g. /mnt/nas/dicom or \\\\nas\\dicom.",
                          field=f"{where}.Path")
    if conn.Type == "smb":
        for key in SMB_REQUIRED:
            value = getattr(conn, key)
            if not (value if key == "Password" else value.strip()):
                raise ConfigError(f"setting {where}.{key} is required for an SMB connection",
                                  f"Fill in {key}: " + _SMB_FIELD_HELP[key], field=f"{where}.{key}")
        for key, refused in (("Host", "/\\ "), ("Share", "/\\")):  # e.g. a UNC path typed into Host
            if any(c in getattr(conn, key) for c in refused):
                raise ConfigError(f"setting {where}.{key} must be a name only, not {getattr(conn, key)!r}",
                                  "Host is the NAS's name or address (nas.hospital.local), Share the shared "
                                  "folder's name (dicom); a folder inside the share goes into Path.",
                                  field=f"{where}.{key}")
    if not 0 < conn.Port < 65536:
        raise ConfigError(f"setting {where}.Port must be between 1 and 65535",
                          "The SMB port is 445 unless the NAS was set up otherwise.", field=f"{where}.Port")
    return conn


def parse_workers(value: Any, where: str = "Nas.Workers") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_WORKERS <= value <= MAX_WORKERS:
        raise ConfigError(f"setting {where} must be an integer between {MIN_WORKERS} and {MAX_WORKERS}",
                          field=where)
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
        TrustedProxy=raw_server.get("TrustedProxy") or None,
    )
    if not 0 <= server.Port < 65536:
        raise ConfigError("setting Nas.ShareServer.Port must be between 0 and 65535")

    dicom_server = parse_dicom_server(section.get("DicomServer", {}), default_host)
    retention = section.get("ImportRetentionHours")
    if retention is not None and (isinstance(retention, bool) or not 0 < retention < 1e6):
        raise ConfigError("setting Nas.ImportRetentionHours must be a positive number of hours, or null",
                          field="ImportRetentionHours")

    settings = Settings(
        Connection=connection,
        DataDirectory=data_dir,
        Workers=workers,
        Enumerator=enumerator,
        DefaultShareHours=default_hours,
        MaxShareHours=max_hours,
        ShareServer=server,
        Schedule=parse_schedule(section.get("Schedule")),
        Throttle=parse_throttle(section.get("Throttle")),
        ExcludedFolders=parse_names(section.get("ExcludedFolders", list(DEFAULT_EXCLUDED_FOLDERS)),
                                    "Nas.ExcludedFolders"),
        SkippedExtensions=normalize_extensions(parse_names(section.get("SkippedExtensions", []),
                                                           "Nas.SkippedExtensions")),
        DicomServer=dicom_server,
        AllowedRoots=parse_allowed(section.get("AllowedRoots", list(DEFAULT_ALLOWED_ROOTS)), "Nas.AllowedRoots"),
        AllowedHosts=parse_allowed(section.get("AllowedHosts", ANY), "Nas.AllowedHosts"),
        Database=parse_database(section.get("Database", {})),
        ImportRetentionHours=retention,
    )
    return settings


def parse_database(raw: Any, where: str = "Nas.Database") -> DatabaseSettings:
    """Validate the `Database` object: `{"Type": "sqlite"}` or `{"Type": "postgresql", "Url": …}`."""
    _check_object(raw, _DATABASE_KEYS, where)
    kind = raw.get("Type", SQLITE)
    if kind not in (SQLITE, POSTGRESQL):
        raise ConfigError(f"setting {where}.Type must be sqlite or postgresql, not {kind!r}")
    url = raw.get("Url", "")
    if kind == POSTGRESQL and not re.match(r"^postgres(ql)?://", url):
        raise ConfigError(f"setting {where}.Url must be a postgresql:// URL when {where}.Type is postgresql",
                          'For example "postgresql://orthanc@db.hospital.local:5432/orthanc_nas".')
    return DatabaseSettings(kind, url, raw.get("Password", ""))


_AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # PS3.5 6.2: AE, 16 characters, no backslash


def _ae_title(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _AE_TITLE_RE.match(value) or not value.strip():
        raise ConfigError(f"setting {where} must be an AE title (1 to 16 characters, no backslash), "
                          f"not {json.dumps(value)[:60]}", field=where)
    return value.strip()


def parse_dicom_server(raw: Any, default_host: str, where: str = "Nas.DicomServer") -> DicomServer:
    """Validate the `DicomServer` object: AE titles (PS3.5 6.2), ports, callers and destinations."""
    _check_object(raw, _DICOM_SERVER_KEYS, where)
    port = raw.get("Port", 4243)
    if not 0 <= port < 65536:
        raise ConfigError(f"setting {where}.Port must be between 0 and 65535", field=f"{where}.Port")
    if not 1 <= raw.get("MaxAssociations", 8) <= 1000:
        raise ConfigError(f"setting {where}.MaxAssociations must be between 1 and 1000",
                          field=f"{where}.MaxAssociations")
    callers = raw.get("AllowedCallers")
    if isinstance(callers, str) and callers != "*":
        raise ConfigError(f'setting {where}.AllowedCallers must be "*", null or a list of {{"AET", "Host"}}',
                          field=f"{where}.AllowedCallers")
    if isinstance(callers, list):
        checked = []
        for n, caller in enumerate(callers):
            at = f"{where}.AllowedCallers[{n}]"
            _check_object(caller, {"AET": (str,), "Host": (str,)}, at)
            if "AET" not in caller:
                raise ConfigError(f"setting {at}.AET is required", field=f"{at}.AET")
            checked.append({"AET": _ae_title(caller["AET"], f"{at}.AET"), **(
                {"Host": caller["Host"].strip()} if caller.get("Host", "").strip() else {})})
        callers = checked
    destinations = {}
    for aet, target in raw.get("Destinations", {}).items():
        at = f"{where}.Destinations.{aet}"
        _ae_title(aet, at)
        if not (isinstance(target, list) and len(target) == 2 and isinstance(target[0], str) and target[0].strip()
                and isinstance(target[1], int) and not isinstance(target[1], bool) and 0 < target[1] < 65536):
            raise ConfigError(f'setting {at} must be ["host", port]', field=at)
        destinations[aet.strip()] = [target[0].strip(), target[1]]
    return DicomServer(
        Enabled=raw.get("Enabled", False), AET=_ae_title(raw.get("AET", "NAS"), f"{where}.AET"), Port=port,
        Host=raw.get("Host") or default_host, AllowedCallers=callers, Destinations=destinations,
        MaxAssociations=raw.get("MaxAssociations", 8), RegisterInOrthanc=raw.get("RegisterInOrthanc", True))


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
    unknown = sorted(set(body) - set(_TOP_KEYS))
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
    _check_object(saved, {"Connection": (dict,), "Workers": (int,)}, SAVED_CONFIG_NAME)
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
