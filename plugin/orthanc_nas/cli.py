"""Command line: index, search and show status without Orthanc.

    python -m orthanc_nas index /mnt/nas/dicom --data /var/lib/orthanc/nas
    python -m orthanc_nas status --data /var/lib/orthanc/nas
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading

from .app import NasApp
from .config import parse_settings
from .errors import NasError


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


def cmd_index(args) -> int:
    section = {"Connection": {"Type": "local", "Path": args.path}, "DataDirectory": args.data}
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
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0 if result["phase"] == "done" else 1


def cmd_status(args) -> int:
    app = NasApp(parse_settings({"DataDirectory": args.data}))
    print(json.dumps(app.status.snapshot(), indent=2, ensure_ascii=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m orthanc_nas", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("index", help="index a local or mounted folder")
    p.add_argument("path", help="the NAS folder")
    p.add_argument("--data", required=True, help="folder for index.db and index_status.json")
    p.add_argument("--workers", type=int, help="reading threads (default 12)")
    p.add_argument("--processes", type=int, help="parsing processes (default: one per core; 0: none)")
    p.add_argument("--full", action="store_true", help="read every file again, even unchanged ones")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

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
