"""shares.db, the request checks, the limiter of wrong links, and the /nas/shares handlers."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import unicodedata

import pytest

from orthanc_nas.api import router
from orthanc_nas.app import NasApp
from orthanc_nas.catalog_writer import CatalogWriter
from orthanc_nas.config import parse_settings
from orthanc_nas.errors import BadRequest, NotFound
from orthanc_nas.http import Request
from orthanc_nas.passphrase import hash_passphrase, verify_passphrase
from orthanc_nas.share_access import DownloadSlots
from orthanc_nas.shares import (
    BUSY,
    COMPLETE,
    DICOMDIR,
    EXPIRED,
    FOLDERS,
    MIGRATIONS,
    REVOKED,
    STARTED,
    USED_UP,
    BadTokenLimiter,
    ShareOptions,
    ShareStore,
    parse_share_request,
)
from orthanc_nas.sources import FileEntry


@pytest.fixture(autouse=True)
def engine(db_engine):
    """Every test of this module on SQLite and on PostgreSQL (see tests/conftest.py)."""
    return db_engine


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(tmp_path, clock):
    store = ShareStore(str(tmp_path), clock=clock)
    yield store
    store.close()


# -- the store ----------------------------------------------------------------------------
@pytest.mark.sqlite_only
def test_only_the_hash_of_a_token_is_stored(store, tmp_path):
    share, token = store.create(["k1", "k2"], 2, "for a colleague")
    assert len(token) == 43 and share.series == ["k1", "k2"] and share.expires_at == share.created_at + 7200
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("shares.db*"))
    assert token.encode() not in raw
    assert hashlib.sha256(token.encode()).digest() in raw
    conn = sqlite3.connect(tmp_path / "shares.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2


def test_lookup_finds_only_the_exact_token(store):
    share, token = store.create(["k"], 1)
    assert store.lookup(token).id == share.id
    other = token[:-1] + ("A" if token[-1] != "A" else "B")
    for wrong in [other, token[:-1], token + "x", "", "../../etc", token.upper() if token != token.upper() else "x"]:
        assert store.lookup(wrong) is None, wrong


def test_tokens_are_distinct(store):
    tokens = {store.create(["k"], 1)[1] for _ in range(50)}
    assert len(tokens) == 50


def test_expiry_and_revocation(store, clock):
    share, token = store.create(["k"], 0.5)
    assert store.lookup(token).refusal(clock()) is None
    clock.now += 1799
    assert store.lookup(token).refusal(clock()) is None
    clock.now += 1
    assert store.lookup(token).refusal(clock()) == EXPIRED
    second, token2 = store.create(["k"], 1)
    assert store.revoke(second.id)["revoked"] is True
    revoked_at = store.lookup(token2).revoked_at
    clock.now += 10
    store.revoke(second.id)  # again: 200, the first time is kept
    assert store.lookup(token2).revoked_at == revoked_at
    assert store.lookup(token2).refusal(clock()) == REVOKED
    with pytest.raises(NotFound):
        store.revoke("nope")


def test_listing_counts_completed_downloads_and_never_holds_the_token(store, clock):
    share, token = store.create(["k"], 1, "lbl")
    other, _ = store.create(["j"], 1)
    store.finish(store.audit("10.0.0.1", share.id, STARTED), COMPLETE, 100)
    clock.now += 5
    store.finish(store.audit("10.0.0.1", share.id, STARTED), "disconnected", 10)
    store.audit("10.0.0.2", share.id, EXPIRED)
    listed = {s["id"]: s for s in store.list()}
    assert listed[share.id] == {"id": share.id, "label": "lbl", "series": ["k"], "created_at": "1970-01-12T13:46:40Z",
                                "expires_at": "1970-01-12T14:46:40Z", "revoked": False, "downloads": 1,
                                "last_download_at": "1970-01-12T13:46:40Z", "max_downloads": None,
                                "passphrase": False, "layout": DICOMDIR}
    assert listed[other.id]["downloads"] == 0 and listed[other.id]["last_download_at"] is None
    assert token not in json.dumps(store.list())
    assert [r["outcome"] for r in store.audit_log(share.id)] == [EXPIRED, "disconnected", COMPLETE]


# -- the body of POST /nas/shares ---------------------------------------------------------------
@pytest.mark.parametrize("body, hours", [
    ({"series": ["a"]}, 24.0), ({"series": ["a"], "expires_in_hours": 0.01}, 0.01),
    ({"series": ["a"], "expires_in_hours": 720}, 720.0), ({"series": ["a"], "expires_in_hours": 3}, 3.0),
])
def test_valid_bodies(body, hours):
    assert parse_share_request(body, 24, 720).hours == hours


def test_series_are_deduplicated_in_order():
    assert parse_share_request({"series": ["b", "a", "b"], "label": "x"}, 24, 720) == ShareOptions(
        ["b", "a"], 24.0, "x", None, None, DICOMDIR)


@pytest.mark.parametrize("body", [
    {}, {"series": []}, {"series": "a"}, {"series": [""]}, {"series": [1]}, {"series": ["a"] * 1001},
    {"series": ["a"], "expires_in_hours": 0}, {"series": ["a"], "expires_in_hours": -2},
    {"series": ["a"], "expires_in_hours": 720.5}, {"series": ["a"], "expires_in_hours": True},
    {"series": ["a"], "expires_in_hours": "5"}, {"series": ["a"], "expires_in_hours": None},
    {"series": ["a"], "expires_in_hours": float("nan")}, {"series": ["a"], "expires_in_hours": float("inf")},
    {"series": ["a"], "label": 3}, {"series": ["a"], "label": "x" * 201}, {"series": ["a"], "token": "x"},
    {"series": ["a"], "passphrase": "short"}, {"series": ["a"], "passphrase": 123456},
    {"series": ["a"], "passphrase": "x" * 201}, {"series": ["a"], "max_downloads": 0},
    {"series": ["a"], "max_downloads": 1.5}, {"series": ["a"], "max_downloads": True},
    {"series": ["a"], "max_downloads": "3"}, {"series": ["a"], "max_downloads": 1001},
    {"series": ["a"], "layout": "flat"}, {"series": ["a"], "layout": None},
])
def test_invalid_bodies(body):
    with pytest.raises(BadRequest) as refused:
        parse_share_request(body, 24, 720)
    assert refused.value.field == ([k for k in body if k != "series"] or ["series"])[0]  # the field at fault


# -- the limiter ------------------------------------------------------------------------------
def test_limiter_refuses_after_too_many_wrong_links_then_forgives(clock):
    limiter = BadTokenLimiter(limit=3, window=60, clock=clock)
    assert [limiter.miss("a"), limiter.miss("a")] == [False, False]
    assert limiter.retry_after("a") == 0
    clock.now += 10
    assert limiter.miss("a") is True
    assert limiter.retry_after("a") == 50  # until the first of the three leaves the window
    assert limiter.retry_after("b") == 0
    clock.now += 50
    assert limiter.retry_after("a") == 0


def test_limiter_memory_is_bounded(clock):
    limiter = BadTokenLimiter(limit=2, window=60, max_clients=100, clock=clock)
    for n in range(1000):
        limiter.miss(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter._misses) == 100


# -- the handlers ------------------------------------------------------------------------------
@pytest.fixture
def app(tmp_path):
    nas = tmp_path / "nas"
    nas.mkdir()
    settings = parse_settings({"Connection": {"Type": "local", "Path": str(nas)}, "DataDirectory": str(tmp_path / "d"),
                               "MaxShareHours": 48, "ShareServer": {"PublicUrl": "https://dicom.example.org/nas/"}})
    app = NasApp(settings)
    writer = CatalogWriter(app.catalog)
    writer.begin_run()
    writer.write([(FileEntry("s/1.dcm", 10, 1), {"SeriesInstanceUID": "1.2.3", "InstanceNumber": 1}, None)])
    writer.close()
    yield app
    app.close()


def call(app, method: str, path: str, body=None):
    request = Request(method, path, body=json.dumps(body).encode() if body is not None else b"",
                      headers={"content-type": "application/json"})
    answer = router.dispatch(app, request)
    return answer.status, json.loads(answer.body)


def test_create_list_revoke(app):
    key = app.catalog.reader().execute("SELECT series_key FROM series").fetchone()[0]
    status, created = call(app, "POST", "/nas/shares", {"series": [key], "expires_in_hours": 48, "label": "L"})
    assert status == 201
    assert created["url"] == f"https://dicom.example.org/nas/share/{created['token']}"  # PublicUrl
    assert created["series"] == [key] and created["label"] == "L"
    status, listed = call(app, "GET", "/nas/shares")
    assert status == 200 and [s["id"] for s in listed] == [created["id"]]
    assert created["token"] not in json.dumps(listed)
    status, revoked = call(app, "DELETE", f"/nas/shares/{created['id']}")
    assert status == 200 and revoked["revoked"] is True
    assert call(app, "DELETE", "/nas/shares/unknown")[0] == 404


def test_the_list_says_what_each_link_holds(app):
    """Links without a label are told apart by their first series still in the index."""
    writer = CatalogWriter(app.catalog)
    writer.begin_run()
    writer.write([(FileEntry("s/1.dcm", 10, 1), {"SeriesInstanceUID": "1.2.3", "InstanceNumber": 1}, None),
                  (FileEntry("t/1.dcm", 10, 1), {"SeriesInstanceUID": "1.2.4", "PatientName": "DOE^JOHN",
                                                 "PatientID": "P1", "StudyDate": "20240316", "Modality": "CT",
                                                 "SeriesDescription": "Lung", "InstanceNumber": 1}, None)])
    writer.close()
    keys = dict(app.catalog.reader().execute("SELECT SeriesInstanceUID, series_key FROM series").fetchall())
    call(app, "POST", "/nas/shares", {"series": [keys["1.2.4"], keys["1.2.3"]]})
    _, listed = call(app, "GET", "/nas/shares")
    assert [a["SeriesDescription"] for a in listed[0]["about"]] == ["Lung", None]
    assert listed[0]["about"][0] == {"PatientName": "DOE^JOHN", "PatientID": "P1", "StudyDate": "20240316",
                                     "StudyDescription": None, "SeriesNumber": None, "SeriesDescription": "Lung",
                                     "Modality": "CT"}


def test_unknown_series_and_limits(app):
    key = app.catalog.reader().execute("SELECT series_key FROM series").fetchone()[0]
    status, error = call(app, "POST", "/nas/shares", {"series": [key, "nope"]})
    assert status == 404 and "'nope'" in error["error"] and error["kind"] == "not_found"
    status, error = call(app, "POST", "/nas/shares", {"series": [key], "expires_in_hours": 49})
    assert status == 400 and "48" in error["error"]
    assert call(app, "GET", "/nas/shares/x")[0] == 405


# -- passphrase, download limit, layout ----------------------------------------------------------
def test_a_passphrase_is_kept_only_as_a_salted_scrypt_hash(store, tmp_path):
    share, token = store.create(["k"], 1, passphrase="Käse auf Brot")
    again, _ = store.create(["k"], 1, passphrase="Käse auf Brot")
    found = store.lookup(token)
    assert found.passphrase_hash.startswith("scrypt$15$8$1$") and found.passphrase_hash != again.passphrase_hash
    assert store.check_passphrase(found, "Käse auf Brot")
    assert store.check_passphrase(found, unicodedata.normalize("NFD", "Käse auf Brot"))  # typed decomposed
    for wrong in ["käse auf brot", "Käse auf Brot ", "", "Kase auf Brot"]:
        assert not store.check_passphrase(found, wrong), wrong
    assert not store.check_passphrase(store.lookup(store.create(["k"], 1)[1]), "")  # none set: nothing opens it
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("shares.db*"))
    assert "Käse".encode() not in raw and b"Brot" not in raw
    listed = {s["id"]: s for s in store.list()}
    assert listed[share.id]["passphrase"] is True and "scrypt" not in json.dumps(listed)


def test_verify_refuses_unreadable_hashes():
    assert verify_passphrase("secret", hash_passphrase("secret"))
    for stored in ["", "scrypt$15$8$1$abc", "bcrypt$x$y$z$a$b", "scrypt$99$8$1$AAAA$AAAA", "scrypt$x$8$1$AA$AA"]:
        assert not verify_passphrase("secret", stored), stored


def test_max_downloads_counts_completed_downloads_only(store, clock):
    share, token = store.create(["k"], 1, max_downloads=2)
    assert share.refusal(clock(), store.completed(share.id)) is None
    store.finish(store.audit("10.0.0.1", share.id, STARTED), "disconnected", 10)
    store.finish(store.audit("10.0.0.1", share.id, STARTED), COMPLETE, 100)
    assert store.lookup(token).refusal(clock(), store.completed(share.id)) is None
    store.finish(store.audit("10.0.0.1", share.id, STARTED), COMPLETE, 100)
    assert store.lookup(token).refusal(clock(), store.completed(share.id)) == USED_UP
    listed = {s["id"]: s for s in store.list()}[share.id]
    assert (listed["downloads"], listed["max_downloads"]) == (2, 2)


def test_download_slots_never_let_more_than_the_limit_run(store):
    share, _ = store.create(["k"], 1, max_downloads=2)
    slots = DownloadSlots()
    assert slots.take(share, store.completed) is None
    assert slots.take(share, store.completed) is None
    assert slots.take(share, store.completed) == BUSY
    store.finish(store.audit("c", share.id, STARTED), COMPLETE, 1)  # one completes, then gives its slot back
    slots.give_back(share)
    assert slots.take(share, store.completed) == BUSY  # 1 completed + 1 running
    store.finish(store.audit("c", share.id, STARTED), "disconnected", 1)  # the other is cut off: not counted
    slots.give_back(share)
    assert slots.take(share, store.completed) is None
    store.finish(store.audit("c", share.id, STARTED), COMPLETE, 1)
    slots.give_back(share)
    assert slots.take(share, store.completed) == USED_UP
    unlimited, _ = store.create(["k"], 1)
    assert all(slots.take(unlimited, store.completed) is None for _ in range(20))


@pytest.mark.sqlite_only
def test_shares_made_before_the_passphrase_open_as_folders(tmp_path):
    conn = sqlite3.connect(tmp_path / "shares.db")
    for statement in MIGRATIONS[0].split(";"):
        conn.execute(statement)
    conn.execute("INSERT INTO shares(id, token_sha256, series, created_at, expires_at) VALUES (?,?,?,?,?)",
                 ("old", hashlib.sha256(b"t" * 43).digest(), '["k"]', 1.0, 2e9))
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    store = ShareStore(str(tmp_path))
    try:
        old = store.lookup("t" * 43)
        assert (old.layout, old.passphrase_hash, old.max_downloads) == (FOLDERS, None, None)
        assert store.create(["k"], 1)[0].layout == DICOMDIR
    finally:
        store.close()
