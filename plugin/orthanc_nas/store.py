"""One storage layer, two engines: SQLite (the default, files in DataDirectory) or PostgreSQL (`Database`).

The index, the shares and their audit, the DICOM node's audit and the jobs of retrieval keep one set of queries, written in
SQLite's dialect with `?` placeholders. Where PostgreSQL differs, the difference lives in the storage layer
and only there: in the statements themselves (translation, search, matching, raw paths) in `store_dialects`;
here, the engines and their connections:

- connections: a `PgConnection` answers like `sqlite3.Connection` (`execute`, `executemany`, cursors with
  `fetchone`/`fetchall`/`rowcount`, rows by position or by column name, `in_transaction`); it borrows a
  connection of a psycopg pool for one statement, or from `BEGIN` to `COMMIT`/`ROLLBACK`;
- engines (`open_engine`): SQLite files in DataDirectory, or one PostgreSQL database for every part;
  `ThreadConnections`: one connection per thread to one part;
- the schema version: SQLite's `PRAGMA user_version` in each file; on PostgreSQL one database holds every
  part, each part's version a row of `nas_migrations`, migrations serialised by an advisory lock
  (`catalog.migrate` runs them);
- a lost database (`DatabaseUnavailable`, 503 kind `database`): the pool reconnects by itself.

PostgreSQL's connection string is libpq's (`postgresql://user@host:5432/dbname`); the password may be
given apart (`Database.Password`).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import DICOM_OUT_OF_RESOURCES, NasError
from .store_dialects import PG_DIALECT, SQLITE, SQLITE_DIALECT, Dialect, configure_pg, dialect, pg_statement

try:  # a runtime dependency; SQLite alone keeps working without it
    import psycopg
    import psycopg_pool
except ImportError:  # pragma: no cover
    psycopg = psycopg_pool = None

#: seconds a request waits for a database connection before answering 503
CONNECT_TIMEOUT = 5.0
#: seconds the pool keeps trying to replace a lost connection (psycopg_pool's `reconnect_timeout`; it waits
#: 1 s, then 2 s, doubling, between attempts); then the next request tries again at once. With its default
#: (300 s) the waits grew to a minute or more in a long outage, and requests went on failing that long after
#: the database was back; with 5 s, a request after it is back gets a connection within about 2 s.
RECONNECT_WITHIN = 5.0
POOL_MAX = 16
#: connections a statement may try: every one the pool may hold idle (each dropped while the server
#: restarted) and a new one; once more only was too few: after a restart, the first statements failed
STALE_TRIES = POOL_MAX + 1


class DatabaseUnavailable(NasError):
    """The database (PostgreSQL) cannot be reached: answered 503, kind `database`."""

    status = 503
    kind = "database"
    default_hint = ("The NAS index's PostgreSQL database cannot be reached: check that it runs and that "
                    "Nas.Database.Url is right. The plugin reconnects by itself when it is back.")
    dicom_status = DICOM_OUT_OF_RESOURCES  # the DICOM node refuses C-FIND, C-MOVE, C-GET until it is back
    dicom_comment = "the NAS index's database cannot be reached: try again later"


@dataclass(frozen=True)
class DatabaseSettings:
    """`Nas.Database`: `{"Type": "sqlite"}` or `{"Type": "postgresql", "Url": …, "Password": …}`."""

    Type: str = SQLITE
    Url: str = ""
    Password: str = field(default="", repr=False)

    def public(self) -> dict:
        return {"Type": self.Type, "Url": self.Url, "PasswordSet": bool(self.Password)}


# -- PostgreSQL connections -----------------------------------------------------------------------------

class Row(tuple):
    """A row by position or by column name (any case: PostgreSQL folds unquoted names to lower case)."""

    _names: dict[str, int]

    def __new__(cls, names: dict[str, int], values):
        row = super().__new__(cls, values)
        row._names = names
        return row

    def __getitem__(self, key):
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key.lower()])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


class Result:
    """The rows of one statement, already fetched (the connection went back to the pool)."""

    def __init__(self, rows: list, rowcount: int):
        self._rows, self.rowcount, self._next = rows, rowcount, 0

    def fetchone(self):
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list:
        rows, self._next = self._rows[self._next:], len(self._rows)
        return rows

    def __iter__(self):
        return iter(self.fetchall())


def _fetched(cursor) -> Result:
    if cursor.description is None:
        return Result([], cursor.rowcount)
    names: dict[str, int] = {}
    for number, column in enumerate(cursor.description):
        names.setdefault(column.name.lower(), number)
    return Result([Row(names, values) for values in cursor.fetchall()], cursor.rowcount)


class PgConnection:
    """A connection in the shape of `sqlite3.Connection`, over a psycopg pool. One per thread, like SQLite's.

    Outside a transaction each statement borrows a pooled connection; `BEGIN` keeps one until
    `COMMIT`/`ROLLBACK`. A lost server raises `DatabaseUnavailable`; the pool makes new connections
    when it is back.
    """

    dialect = PG_DIALECT
    row_factory = None  # rows are always `Row`s (set by callers written for sqlite3)

    def __init__(self, pool):
        self.pool = pool
        self._held = None

    @property
    def in_transaction(self) -> bool:
        return self._held is not None

    def execute(self, sql: str, args: Sequence = ()) -> Result:
        statement = pg_statement(sql)
        word = statement.split(None, 1)[0].upper() if statement else ""
        if word == "BEGIN":
            if self._held is not None:
                return self._run(self._held, statement, args)
            for attempt in range(STALE_TRIES):  # connections dropped while idle: another one (see `_alone`)
                self._held = conn = self._borrow()
                try:
                    return self._run(conn, statement, args)
                except DatabaseUnavailable:
                    if attempt == STALE_TRIES - 1 or not conn.closed:
                        raise
        if self._held is not None:
            conn = self._held
            if word in ("COMMIT", "ROLLBACK", "END") and not statement.upper().startswith("ROLLBACK TO"):
                self._held = None
                try:
                    return self._run(conn, statement, args)
                finally:
                    self.pool.putconn(conn)
            return self._run(conn, statement, args)
        return self._alone(statement, args)

    def _alone(self, statement: str, args, *, many: bool = False) -> Result:
        """One statement outside a transaction. A pooled connection the server dropped while it was idle
        (the server restarted) fails at once, before the statement runs: the statement is tried on another
        one, until one works or none is left (the pool discards each closed one; then it connects anew)."""
        for attempt in range(STALE_TRIES):
            conn = self._borrow()
            try:
                return self._run(conn, statement, args, many=many)
            except DatabaseUnavailable:
                if attempt == STALE_TRIES - 1 or not conn.closed:
                    raise
            finally:
                self.pool.putconn(conn)
        raise AssertionError("not reached")

    def executemany(self, sql: str, rows) -> Result:
        rows = list(rows)
        if self._held is not None:
            return self._run(self._held, pg_statement(sql), rows, many=True)
        return self._alone(pg_statement(sql), rows, many=True)

    def _borrow(self):
        try:
            return self.pool.getconn(timeout=CONNECT_TIMEOUT)
        except psycopg_pool.PoolTimeout as exc:
            raise DatabaseUnavailable(f"the NAS index's database cannot be reached ({exc})") from exc

    def _run(self, conn, statement: str, args, *, many: bool = False) -> Result:
        try:
            with conn.cursor() as cursor:
                if many:
                    cursor.executemany(statement, args)
                    return Result([], cursor.rowcount)
                cursor.execute(statement, tuple(args))
                return _fetched(cursor)
        except psycopg.OperationalError as exc:
            if conn is self._held:  # the transaction is lost with its connection
                self._held = None
                self.pool.putconn(conn)
            raise DatabaseUnavailable(f"the NAS index's database failed: {str(exc).strip()[:300]}") from exc

    def close(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            try:
                held.rollback()
            except psycopg.Error:
                pass
            self.pool.putconn(held)


# -- engines ------------------------------------------------------------------------------------------

class Engine:
    """Where the databases of one DataDirectory live: `connect(part)` gives a connection to one part
    (`index`, `shares`, `dicom`, `jobs`), `exists(part)` whether it was made already."""

    dialect: Dialect = SQLITE_DIALECT
    shared = False  # True: several Orthanc nodes may use it at once

    def connect(self, part: str):
        raise NotImplementedError

    def exists(self, part: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        pass


#: the SQLite file of each part
SQLITE_FILES = {"index": "index.db", "shares": "shares.db", "dicom": "dicom.db", "jobs": "jobs.db"}


class SqliteEngine(Engine):
    def __init__(self, data_dir: str):
        self.data_dir = data_dir

    def path(self, part: str) -> str:
        return os.path.join(self.data_dir, SQLITE_FILES.get(part, f"{part}.db"))

    def connect(self, part: str) -> sqlite3.Connection:
        from .catalog import connect

        os.makedirs(self.data_dir, exist_ok=True)
        return connect(self.path(part))

    def exists(self, part: str) -> bool:
        return os.path.exists(self.path(part))


class PostgresEngine(Engine):
    dialect = PG_DIALECT
    shared = True

    def __init__(self, url: str, password: str = "", *, max_size: int = POOL_MAX):
        if psycopg is None:  # pragma: no cover
            raise DatabaseUnavailable("Nas.Database.Type is postgresql but psycopg is not installed",
                                      "Install the plugin's dependencies (pip install 'psycopg[binary]' psycopg_pool).")
        kwargs = {"autocommit": True, "connect_timeout": int(CONNECT_TIMEOUT)}
        if password:
            kwargs["password"] = password
        self.url = url
        self.pool = psycopg_pool.ConnectionPool(url, kwargs=kwargs, min_size=1, max_size=max_size, open=True,
                                                timeout=CONNECT_TIMEOUT, reconnect_timeout=RECONNECT_WITHIN,
                                                name="orthanc-nas", configure=configure_pg)
        self._lock = threading.Lock()

    def connect(self, part: str) -> PgConnection:
        return PgConnection(self.pool)

    def exists(self, part: str) -> bool:
        row = PgConnection(self.pool).execute(
            "SELECT 1 FROM information_schema.tables WHERE table_name='nas_migrations' "
            "AND table_schema=current_schema()").fetchone()
        if row is None:
            return False
        return PgConnection(self.pool).execute("SELECT 1 FROM nas_migrations WHERE part=?", (part,)).fetchone() \
            is not None

    def close(self) -> None:
        self.pool.close()


class ThreadConnections:
    """One connection per thread to one part of an engine (as the part's stores are used from REST
    requests and worker threads at once), opened and the part migrated at first use; rows answer by
    column name on both engines. `close` closes them all (from whichever thread)."""

    def __init__(self, engine: Engine, part: str, migrations: Sequence):
        self.engine, self.part, self.migrations = engine, part, migrations
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list = []

    def get(self):
        """This thread's connection (`sqlite3.Connection` or `PgConnection`)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            from .catalog import migrate

            conn = self.engine.connect(self.part)
            migrate(conn, self.migrations, self.part)
            conn.row_factory = sqlite3.Row  # (rows of PostgreSQL answer by name already)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            try:
                conn.close()
            except (sqlite3.Error, DatabaseUnavailable):  # closed from another thread: harmless at exit
                pass
        self._local = threading.local()


def default_engine(data_dir: str) -> Engine:
    """The engine of a part made without one: SQLite files in `data_dir` (the tests swap it for PostgreSQL)."""
    return SqliteEngine(data_dir)


def open_engine(settings: DatabaseSettings | None, data_dir: str) -> Engine:
    """The engine `Nas.Database` names (SQLite files in `data_dir` by default)."""
    if settings is None or settings.Type == SQLITE:
        return SqliteEngine(data_dir)
    return PostgresEngine(settings.Url, settings.Password)


# -- schema versions ----------------------------------------------------------------------------------

def schema_version(conn, part: str) -> int:
    """The migrations a part has seen (0: none)."""
    if dialect(conn) is SQLITE_DIALECT:
        return conn.execute("PRAGMA user_version").fetchone()[0]
    conn.execute("CREATE TABLE IF NOT EXISTS nas_migrations (part TEXT PRIMARY KEY, version INTEGER NOT NULL)")
    row = conn.execute("SELECT version FROM nas_migrations WHERE part=?", (part,)).fetchone()
    return row[0] if row else 0


def lock_schema(conn, part: str) -> None:
    """Within a transaction: wait for any other node or thread migrating the same database."""
    if dialect(conn) is not SQLITE_DIALECT:  # SQLite: BEGIN IMMEDIATE holds the write lock already
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('orthanc-nas migrations'))")


def set_schema_version(conn, part: str, number: int) -> None:
    if dialect(conn) is SQLITE_DIALECT:
        conn.execute(f"PRAGMA user_version={int(number)}")
    else:
        conn.execute("INSERT INTO nas_migrations(part, version) VALUES (?, ?) "
                     "ON CONFLICT(part) DO UPDATE SET version=excluded.version", (part, number))
