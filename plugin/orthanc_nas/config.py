"""The `Nas` section of orthanc.json, validated once into frozen dataclasses.

An unknown key or a value of the wrong type raises `ConfigError` naming the key
(`Nas.Connection.Prot`), which stops the plugin while Orthanc starts: a
configuration error fails closed and loudly.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from .errors import ConfigError
from .schedule import parse_schedule
from .store import DatabaseSettings
from .store_dialects import POSTGRESQL, SQLITE
from .throttle import Throttle, parse_throttle

CONNECTION_TYPES = ("local", "smb")
ENUMERATORS = ("auto", "scandir", "robocopy", "powershell")
DEFAULT_WORKERS = 12
MIN_WORKERS, MAX_WORKERS = 1, 64
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


# The dataclasses above are the one declaration of each setting: its name, its default and, from its
# annotation, the JSON types it accepts (a tuple is a JSON list, a settings class a JSON object).
_JSON_TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,),
                                            "dict": (dict,), "list": (list,), "None": (type(None),)}


def _json_types(annotation: Any) -> tuple[type, ...]:
    name = annotation if isinstance(annotation, str) else annotation.__name__
    accepted: list[type] = []
    for part in (p.strip() for p in name.split("|")):
        accepted += _JSON_TYPES.get("list" if part.startswith("tuple[") else part, (dict,))
    return tuple(dict.fromkeys(accepted))


def _keys(settings_class: type) -> dict[str, tuple[type, ...]]:
    """Each setting of a settings dataclass → the JSON types it accepts."""
    return {f.name: _json_types(f.type) for f in fields(settings_class)}


TOP_KEYS, _CONNECTION_KEYS = _keys(Settings), _keys(Connection)
_SHARE_SERVER_KEYS, _DICOM_SERVER_KEYS, _DATABASE_KEYS = _keys(ShareServer), _keys(DicomServer), _keys(DatabaseSettings)


def check_object(obj: Any, keys: dict, where: str) -> None:
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
    check_object(raw, _CONNECTION_KEYS, where)
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
    check_object(section, TOP_KEYS, "Nas")

    data_dir = section.get("DataDirectory")
    if data_dir is None:
        storage = orthanc_config.get("StorageDirectory", "OrthancStorage")
        data_dir = os.path.join(storage, "nas")
    data_dir = os.path.abspath(data_dir)

    # No connection yet is allowed: it can be set from the NAS panel.
    connection = parse_connection(section["Connection"]) if "Connection" in section else Connection()

    workers = parse_workers(section.get("Workers", Settings.Workers))
    enumerator = section.get("Enumerator", Settings.Enumerator)
    if enumerator not in ENUMERATORS:
        raise ConfigError(f"setting Nas.Enumerator must be one of {', '.join(ENUMERATORS)}, not {enumerator!r}")

    default_hours = section.get("DefaultShareHours", Settings.DefaultShareHours)
    max_hours = section.get("MaxShareHours", Settings.MaxShareHours)
    if max_hours <= 0:
        raise ConfigError("setting Nas.MaxShareHours must be positive")
    if not 0 < default_hours <= max_hours:
        raise ConfigError("setting Nas.DefaultShareHours must be positive and at most Nas.MaxShareHours")

    raw_server = section.get("ShareServer", {})
    check_object(raw_server, _SHARE_SERVER_KEYS, "Nas.ShareServer")
    default_host = "0.0.0.0" if orthanc_config.get("RemoteAccessAllowed", False) else "127.0.0.1"
    server = ShareServer(
        Host=raw_server.get("Host", default_host),
        Port=raw_server.get("Port", ShareServer.Port),
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
        ExcludedFolders=parse_names(section.get("ExcludedFolders", Settings.ExcludedFolders),
                                    "Nas.ExcludedFolders"),
        SkippedExtensions=normalize_extensions(parse_names(section.get("SkippedExtensions", []),
                                                           "Nas.SkippedExtensions")),
        DicomServer=dicom_server,
        AllowedRoots=parse_allowed(section.get("AllowedRoots", list(Settings.AllowedRoots)), "Nas.AllowedRoots"),
        AllowedHosts=parse_allowed(section.get("AllowedHosts", Settings.AllowedHosts), "Nas.AllowedHosts"),
        Database=parse_database(section.get("Database", {})),
        ImportRetentionHours=retention,
    )
    return settings


def parse_database(raw: Any, where: str = "Nas.Database") -> DatabaseSettings:
    """Validate the `Database` object: `{"Type": "sqlite"}` or `{"Type": "postgresql", "Url": …}`."""
    check_object(raw, _DATABASE_KEYS, where)
    kind = raw.get("Type", DatabaseSettings.Type)
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
    check_object(raw, _DICOM_SERVER_KEYS, where)
    port = raw.get("Port", DicomServer.Port)
    if not 0 <= port < 65536:
        raise ConfigError(f"setting {where}.Port must be between 0 and 65535", field=f"{where}.Port")
    if not 1 <= raw.get("MaxAssociations", DicomServer.MaxAssociations) <= 1000:
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
            check_object(caller, {"AET": (str,), "Host": (str,)}, at)
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
        Enabled=raw.get("Enabled", DicomServer.Enabled), AET=_ae_title(raw.get("AET", DicomServer.AET), f"{where}.AET"),
        Port=port,
        Host=raw.get("Host") or default_host, AllowedCallers=callers, Destinations=destinations,
        MaxAssociations=raw.get("MaxAssociations", DicomServer.MaxAssociations),
        RegisterInOrthanc=raw.get("RegisterInOrthanc", DicomServer.RegisterInOrthanc))
