"""Command line: index, search and show status without Orthanc.

    python -m orthanc_nas index /mnt/nas/dicom --data /var/lib/orthanc/nas
    NAS_PASSWORD=... python -m orthanc_nas index smb://user@nas:445/dicom/ct --data /var/lib/orthanc/nas
    python -m orthanc_nas search "john doe" --data /var/lib/orthanc/nas
    python -m orthanc_nas status --data /var/lib/orthanc/nas
    python -m orthanc_nas migrate --from /var/lib/orthanc/nas --to postgresql://orthanc@db:5432/orthanc_nas
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import unicodedata
import urllib.parse

from .app import NasApp
from .catalog import Catalog
from .config import parse_database, parse_settings
from .errors import ConfigError, NasError
from .search import SearchParams, search
from .store import SQLITE_FILES, open_engine


def _progress(app: NasApp, done: threading.Event) -> None:
    """A one-line progress bar on a terminal, refreshed twice a second."""
    while not done.wait(0.5):
        s = app.status.snapshot()
        total = max(s["enumerated_files"], 1)
        width = 30
        filled = int(width * min(s["files_processed"] / total, 1))
        more = "" if s["enumeration_done"] else "+"
        eta = f" ETA {s['eta_seconds']:.0f}s" if s["eta_seconds"] is not None else ""
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {s['files_processed']}/{s['enumerated_files']}"
                         f"{more} files, {s['series_count']} series, {s['errors']} errors, "
                         f"{s['files_per_second']:.0f} files/s{eta}   ")
        sys.stderr.flush()
    sys.stderr.write("\n")


def connection_section(where: str) -> dict:
    """The `Connection` for a folder, or for `smb://[domain;]user@host[:port]/share[/path]`.

    The password of an SMB share comes from the environment (NAS_PASSWORD), never from the
    command line, where any user of the machine could read it.
    """
    if not where.startswith("smb://"):
        return {"Type": "local", "Path": where}
    url = urllib.parse.urlsplit(where)
    share, _, path = url.path.lstrip("/").partition("/")
    user = urllib.parse.unquote(url.username or "")
    domain, _, user = user.rpartition(";")
    if not (url.hostname and share and user):
        raise ConfigError(f"not an SMB address: {where}", "Write it as smb://user@host[:port]/share[/folder].")
    password = os.environ.get("NAS_PASSWORD")
    if not password:
        raise ConfigError("the SMB password is missing: set the environment variable NAS_PASSWORD")
    section = {"Type": "smb", "Host": url.hostname, "Share": urllib.parse.unquote(share),
               "Path": urllib.parse.unquote(path), "Username": user, "Password": password, "Domain": domain}
    if url.port:
        section["Port"] = url.port
    return section


def cmd_index(args) -> int:
    section = {"Connection": connection_section(args.path), "DataDirectory": args.data}
    if args.workers:
        section["Workers"] = args.workers
    app = NasApp(parse_settings(section), parse_processes=args.processes)
    done = threading.Event()
    bar = None
    if sys.stderr.isatty() and not args.quiet:
        bar = threading.Thread(target=_progress, args=(app, done), daemon=True)
        bar.start()
    try:
        app.status.start(app.settings.Workers)
        result = app.indexer.run(full=args.full)
    except KeyboardInterrupt:
        app.indexer.stop()
        app.indexer.wait()
        result = app.status.snapshot()
    finally:
        done.set()
        if bar:
            bar.join()
        app.close()
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if result["phase"] == "done" else 1


def cmd_status(args) -> int:
    app = NasApp(parse_settings({"DataDirectory": args.data}))
    print(json.dumps(app.status.snapshot(), indent=2, ensure_ascii=False))
    return 0


#: (heading, field, widest) of the search table
SEARCH_COLUMNS = (
    ("Date", "StudyDate", 10), ("Patient", "PatientName", 28), ("ID", "PatientID", 14),
    ("Study", "StudyDescription", 24), ("Series", "SeriesDescription", 24), ("Mod", "Modality", 4),
    ("Files", "file_count", 6), ("Key", "series_key", 20),
)


def _width(text: str) -> int:
    """Columns a string takes on a terminal (CJK characters take two)."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _fit(text: str, width: int) -> str:
    """`text` cut to `width` terminal columns (with … when cut) and padded to it."""
    if _width(text) > width:
        while _width(text) > width - 1:
            text = text[:-1]
        text += "…"
    return text + " " * (width - _width(text))


def _cell(series: dict, field: str) -> str:
    value = series.get(field)
    if value is None:
        return ""
    if field == "StudyDate" and len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    if field == "PatientName":  # DOE^JOHN=ドウ^ジョン → DOE JOHN = ドウ ジョン
        groups = (" ".join(group.replace("^", " ").split()) for group in value.split("="))
        return " = ".join(group for group in groups if group)
    return str(value)


def format_table(rows: list[dict], total: int, offset: int) -> str:
    """The search answer as an aligned text table with a line saying how many there are."""
    cells = [[_cell(row, field) for _, field, _ in SEARCH_COLUMNS] for row in rows]
    widths = [min(limit, max([_width(heading)] + [_width(r[i]) for r in cells]))
              for i, (heading, _, limit) in enumerate(SEARCH_COLUMNS)]
    lines = ["  ".join(_fit(heading, w) for (heading, _, _), w in zip(SEARCH_COLUMNS, widths, strict=True))]
    lines += ["  ".join(_fit(c, w) for c, w in zip(row, widths, strict=True)) for row in cells]
    shown = f"{offset + 1}–{offset + len(rows)} of {total}" if rows else f"none of {total}"
    more = " (--offset shows more)" if offset + len(rows) < total else ""
    lines.append(f"{shown} series{more}")
    return "\n".join(line.rstrip() for line in lines)


def cmd_search(args) -> int:
    query = {"q": " ".join(args.words), "modality": args.modality, "date_from": args.date_from,
             "date_to": args.date_to, "limit": args.limit, "offset": args.offset}
    params = SearchParams.parse({k: v for k, v in query.items() if v is not None})
    result = search(Catalog(args.data).reader(), params)
    if args.json:
        print(json.dumps(result.series, indent=2, ensure_ascii=False))
    else:
        print(format_table(result.series, result.total, params.offset))
    return 0


def cmd_migrate(args) -> int:
    from .moving import copy_data_directory

    if not any(os.path.exists(os.path.join(args.source, name)) for name in SQLITE_FILES.values()):
        raise ConfigError(f"no index.db, shares.db, dicom.db or jobs.db in {args.source}",
                          "Give the plugin's DataDirectory (by default nas/ under Orthanc's StorageDirectory).")
    target = open_engine(parse_database({"Type": "postgresql", "Url": args.target}, "--to"), args.source)
    try:
        done = copy_data_directory(args.source, target)
    finally:
        target.close()
    for part, found in done.items():
        rows = ", ".join(f"{n} {table}" for table, n in found["tables"].items())
        print(f"{part}: {rows}")
    print(f'Done. Set Nas.Database to {{"Type": "postgresql", "Url": "{args.target}"}} on every '
          "Orthanc node; the SQLite files were left as they were.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orthanc_nas", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index a local or mounted folder, or an SMB share")
    p.add_argument("path", help="the NAS folder, or smb://user@host[:port]/share[/folder] "
                                "(password in the environment variable NAS_PASSWORD)")
    p.add_argument("--data", required=True, help="folder for index.db and index_status.json")
    p.add_argument("--workers", type=int, help="reading threads (default 12)")
    p.add_argument("--processes", type=int, help="parsing processes (default: one per core; 0: none)")
    p.add_argument("--full", action="store_true", help="read every file again, even unchanged ones")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="search the index by patient name, ID, study or series description")
    p.add_argument("words", nargs="*", help="words that must all occur (any case, accents ignored)")
    p.add_argument("--data", required=True, help="folder of index.db")
    p.add_argument("--modality", help="only this modality, e.g. CT")
    p.add_argument("--from", dest="date_from", metavar="YYYYMMDD", help="study date on or after")
    p.add_argument("--to", dest="date_to", metavar="YYYYMMDD", help="study date on or before")
    p.add_argument("--limit", help="series shown (default 100, at most 1000)")
    p.add_argument("--offset", help="series skipped first")
    p.add_argument("--json", action="store_true", help="print the JSON the REST route answers")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("migrate", help="copy an SQLite index, its shares and audits into PostgreSQL")
    p.add_argument("--from", dest="source", required=True, metavar="DIR",
                   help="the DataDirectory holding index.db, shares.db, dicom.db")
    p.add_argument("--to", dest="target", required=True, metavar="URL",
                   help="postgresql://user@host:5432/dbname (password: PGPASSWORD or ~/.pgpass)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("status", help="show the status of the last indexing")
    p.add_argument("--data", required=True, help="folder for index.db and index_status.json")
    p.set_defaults(func=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NasError as exc:
        print(f"error: {exc.message}\nhint: {exc.hint}", file=sys.stderr)
        return 2
