"""Shared test configuration: the core is imported from plugin/ (see pyproject's pythonpath).

Hypothesis profiles (`HYPOTHESIS_PROFILE=NAME`, else `ci` when `CI` is set, else `dev`):
- `dev`: random examples each run, found failures kept in `.hypothesis/` and replayed first;
- `ci`: the same examples on every run (derandomized, no example database), so a run is repeatable;
- `fuzz`: ten times the examples, to hunt for new disagreements by hand.
The cases found so far are replayed in every profile by the tests' `@example`s.
"""

import os
import warnings

from hypothesis import settings

# pydicom warns about each odd test file it is fed on purpose
warnings.filterwarnings("ignore", module="pydicom")

settings.register_profile("dev", max_examples=300)
settings.register_profile("ci", max_examples=300, derandomize=True, database=None, print_blob=True)
settings.register_profile("fuzz", max_examples=3000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))


# -- the database engines -------------------------------------------------------------------------------
# The catalog, search and shares tests run on both engines: `db_engine` (parameter "sqlite" or
# "postgresql") makes every part created without an engine in that test use it. On PostgreSQL each
# DataDirectory of the test gets a database of its own in one private cluster per pytest session.

import itertools  # noqa: E402

import pytest  # noqa: E402

_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL cluster on a free port, for the whole session (see tests/support/postgres.py)."""
    from tests.support.postgres import PostgresCluster, bin_dir

    if bin_dir() is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def pg_database(postgres):
    """A fresh database of the test cluster: its URL; dropped after the test."""
    name = f"nas_test_{os.getpid()}_{next(_database_numbers)}"
    url = postgres.create_database(name)
    yield url
    postgres.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_engine(request, monkeypatch):
    """The engine name; on "postgresql", `store.default_engine` gives a PostgreSQL database per folder."""
    from orthanc_nas import store

    if request.param == "sqlite":
        yield "sqlite"
        return
    if request.node.get_closest_marker("sqlite_only"):
        pytest.skip("about SQLite's files themselves")
    cluster = request.getfixturevalue("postgres")
    engines: dict[str, store.PostgresEngine] = {}
    names: list[str] = []

    def engine_for(data_dir: str) -> store.Engine:
        key = os.path.abspath(data_dir)
        if key not in engines:
            name = f"nas_test_{os.getpid()}_{next(_database_numbers)}"
            names.append(name)
            engines[key] = store.PostgresEngine(cluster.create_database(name), max_size=4)
        return engines[key]

    monkeypatch.setattr(store, "default_engine", engine_for)
    yield "postgresql"
    for engine in engines.values():
        engine.close()
    for name in names:
        cluster.drop_database(name)
