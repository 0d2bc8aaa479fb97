"""Moving an existing index into PostgreSQL: `python -m orthanc_nas migrate --from DIR --to postgresql://…`.

Copies the SQLite files of a DataDirectory (`index.db`, `shares.db`, `dicom.db`, `jobs.db`, those that
exist) into a database, part by part, each part in one transaction: the files and series, the runs, the
shares and their audit, the DICOM node's audit, the jobs of retrieval and what they imported (so
`ImportRetentionHours` still deletes it). Both sides are brought to the same schema version first (the
numbered migrations), so every column has its place. Share links keep working: a share holds only
the SHA-256 of its token, copied as it is. Identity counters continue after the copied ids.

A target that already holds rows of a part is refused (nothing is merged or overwritten). A path that
is not valid UTF-8 (raw bytes in SQLite, see `pathnames`) goes as a `RawPath`, which PostgreSQL keeps in
its escaped text form (`store_dialects.path_text`).
"""

from __future__ import annotations

from collections.abc import Callable

from . import store, store_dialects
from .catalog import migrate, transaction
from .catalog_migrations import DERIVED_TABLES
from .catalog_migrations import MIGRATIONS as INDEX_MIGRATIONS
from .dicom.audit import MIGRATIONS as DICOM_MIGRATIONS
from .errors import Busy
from .jobs import MIGRATIONS as JOBS_MIGRATIONS
from .pathnames import RawPath
from .shares import MIGRATIONS as SHARES_MIGRATIONS

PARTS = {"index": INDEX_MIGRATIONS, "shares": SHARES_MIGRATIONS, "dicom": DICOM_MIGRATIONS, "jobs": JOBS_MIGRATIONS}
CHUNK = 2000


def _tables(conn) -> list[str]:
    """The tables to copy: not SQLite's own, nor those the target's triggers fill (and their FTS5 shadow
    tables, `series_words_data`…)."""
    return [name for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        if not any(name == derived or name.startswith(derived + "_") for derived in DERIVED_TABLES)]


def copy_part(source, target, part: str, progress: Callable[[str, int], None] = lambda table, n: None) -> dict:
    """Copy every table of one part from an SQLite connection into `target`: `{"tables": {table: rows}}`
    copied. Busy (409) if the target has rows already."""
    migrate(source, PARTS[part], part)
    migrate(target, PARTS[part], part)
    counts: dict[str, int] = {}
    tables = _tables(source)
    with transaction(target):
        for table in tables:
            if target.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None:
                raise Busy(f"the target database already holds rows of {table} ({part})",
                           "Migrate into an empty database; the SQLite files are left as they were.")
        for table in tables:
            info = source.execute(f"PRAGMA table_info({table})").fetchall()
            columns = [row[1] for row in info]
            identity = [row[1] for row in info if row[5] and row[2].upper() == "INTEGER"]
            marks = ",".join("?" * len(columns))
            insert = f"INSERT INTO {table}({', '.join(columns)}) VALUES ({marks})"
            cursor = source.execute(f"SELECT {', '.join(columns)} FROM {table}")
            copied = 0
            path = columns.index("path") if table == "files" else None
            while rows := cursor.fetchmany(CHUNK):
                if path is not None:  # a name that is not UTF-8: SQLite gives plain bytes
                    rows = [row if not isinstance(row[path], bytes) else
                            (*row[:path], RawPath(row[path]), *row[path + 1:]) for row in rows]
                target.executemany(insert, rows)
                copied += len(rows)
                progress(table, copied)
            counts[table] = copied
            for column in identity:
                store_dialects.dialect(target).continue_identity(target, table, column)
    return {"tables": counts}


def copy_data_directory(data_dir: str, target: store.Engine,
                        progress: Callable[[str, int], None] = lambda table, n: None) -> dict:
    """Copy the parts whose SQLite file exists in `data_dir` into `target`: `{part: copy_part's answer}`."""
    source = store.SqliteEngine(data_dir)
    done = {}
    for part in PARTS:
        if not source.exists(part):
            continue
        src, dst = source.connect(part), target.connect(part)
        try:
            done[part] = copy_part(src, dst, part, progress)
        finally:
            src.close()
            dst.close()
    return done
