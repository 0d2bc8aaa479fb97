"""Share links through a real Orthanc with authentication on, and its share listener on a free port."""

from __future__ import annotations

import hashlib
import http.client
import io
import os
import posixpath
import secrets
import socket
import sqlite3
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import pytest
import requests
from tests.support.dicom import write_dicom, write_series
from tests.support.orthanc import TARGET, OrthancServer, free_port

from orthanc_nas.catalog import series_key

pytestmark = pytest.mark.integration

HOSTILE_PATIENT = "../../..^C:\\Windows\\System32"
HOSTILE_DESCRIPTION = "..\\..\\x/y:z*?\"<>|\u202egpj.exe"
HOSTILE_FILES = ["a:b.dcm", "CON.dcm", "..dcm", "tab\tname.dcm", "Ünï ß.dcm", "IM1.dcm", "im1.dcm", ".hidden", "sp ace.dcm"]
ISSUED: list[str] = []  # every token this module created: none may be stored or logged


def _series(folder: Path, count: int, **kw) -> tuple[str, list[Path]]:
    uid = kw.setdefault("SeriesInstanceUID", f"2.25.{secrets.randbits(64)}")
    return series_key({"SeriesInstanceUID": uid}, ""), write_series(folder, count, **kw)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("nas")
    plain_key, plain = _series(root / "plain", 12, pixel_bytes=20_000)
    big_key, big = _series(root / "big", 16, pixel_bytes=4 * 1024 * 1024, sparse=True)
    fragile_key, fragile = _series(root / "fragile", 3)
    changed_key, changed = _series(root / "changed", 3)
    uid = f"2.25.{secrets.randbits(64)}"
    hostile = [write_dicom(root / "hostile" / name, InstanceNumber=n, SeriesInstanceUID=uid,
                              PatientName=HOSTILE_PATIENT, SeriesDescription=HOSTILE_DESCRIPTION,
                              SpecificCharacterSet="ISO_IR 192")
               for n, name in enumerate(HOSTILE_FILES, start=1)]
    return {"root": root, "plain": (plain_key, plain), "big": (big_key, big), "fragile": (fragile_key, fragile),
            "changed": (changed_key, changed),
            "hostile": (series_key({"SeriesInstanceUID": uid}, ""), hostile)}


def _start(tmp_path_factory, corpus, name: str, port: int) -> OrthancServer:
    work = tmp_path_factory.mktemp(name)
    server = OrthancServer(work, nas={"Connection": {"Type": "local", "Path": str(corpus["root"])},
                                      "DataDirectory": str(work / "nasdata"), "ShareServer": {"Port": port}},
                           auth=True)
    server.start()
    server.share_port = port
    server.data = work / "nasdata"
    assert server.index()["phase"] == "done"
    return server


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, corpus):
    server = _start(tmp_path_factory, corpus, "orthanc", free_port())
    yield server
    server.stop()


# -- helpers ----------------------------------------------------------------------------
def create(orthanc: OrthancServer, keys: list[str], **body) -> dict:
    """A share of `keys`; the zip's layout is the readable folders unless `layout` is given."""
    answer = orthanc.post("/nas/shares", json={"series": keys, "layout": "folders", **body})
    assert answer.status_code == 201, answer.text
    share = answer.json()
    ISSUED.append(share["token"])
    return share


def fetch(url: str, method: str = "GET", source: str = "127.0.0.1") -> tuple[int, dict, bytes]:
    """A request without any credentials, from a chosen loopback address (the limiter counts per address)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30, source_address=(source, 0))
    try:
        conn.request(method, parts.path)
        answer = conn.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        conn.close()


def audit(orthanc: OrthancServer, share_id: str | None = None) -> list[dict]:
    conn = sqlite3.connect(f"file:{orthanc.data / 'shares.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        where, args = ("WHERE share_id=?", (share_id,)) if share_id else ("", ())
        return [dict(r) for r in conn.execute(f"SELECT * FROM audit {where} ORDER BY id", args)]
    finally:
        conn.close()


def wait_outcome(orthanc: OrthancServer, share_id: str, outcomes: set[str], timeout: float = 15) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [row for row in audit(orthanc, share_id) if row["outcome"] in outcomes]
        if done:
            return done[-1]
        time.sleep(0.1)
    raise AssertionError(f"no {outcomes} in the audit of {share_id}: {audit(orthanc, share_id)}")


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- Orthanc's authentication stays whole -------------------------------------------------
def test_nas_routes_need_credentials(orthanc, corpus):
    anonymous = requests.Session()
    for method, path in [("GET", "/nas/status"), ("GET", "/nas/shares"), ("POST", "/nas/shares"),
                         ("DELETE", "/nas/shares/abc"), ("POST", "/nas/index")]:
        answer = anonymous.request(method, orthanc.url + path, json={"series": [corpus["plain"][0]]}, timeout=10)
        assert answer.status_code == 401, (method, path)
    assert orthanc.get("/nas/shares").status_code == 200


def test_listener_serves_nothing_but_share_links(orthanc, corpus):
    share = create(orthanc, [corpus["plain"][0]])
    base = f"http://127.0.0.1:{orthanc.share_port}"
    for path in ["/", "/share/", "/share/a/b", "/nas/status", "/app/explorer.html", "/system",
                 f"{urlsplit(share['url']).path}/x"]:
        status, headers, _ = fetch(base + path, source="127.0.0.3")
        assert status == 404, path
        assert headers["cache-control"] == "no-store"
    for method in ("PUT", "DELETE", "OPTIONS"):
        assert fetch(share["url"], method, source="127.0.0.3")[0] == 404, method
    # the page takes the passphrase form (POST); the zip's own address takes nothing but GET and HEAD
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        assert fetch(share["url"] + "/download", method, source="127.0.0.3")[0] == 404, method


# -- create, download, compare ---------------------------------------------------------------
def test_share_downloads_without_credentials_byte_for_byte(orthanc, corpus):
    key, files = corpus["plain"]
    share = create(orthanc, [key], label="for Dr. Who", expires_in_hours=0.5)
    assert set(share) >= {"id", "token", "url", "expires_at", "series", "label"}
    assert share["series"] == [key] and share["label"] == "for Dr. Who"
    assert share["url"] == f"http://127.0.0.1:{orthanc.share_port}/share/{share['token']}"
    assert len(share["token"]) >= 43

    status, headers, body = fetch(share["url"])
    assert status == 200
    assert headers["content-type"] == "application/zip"
    assert int(headers["content-length"]) == len(body)
    assert headers["referrer-policy"] == "no-referrer" and headers["cache-control"] == "no-store"
    assert headers["content-disposition"].startswith('attachment; filename="DOE_JOHN_20240102_AXIAL.zip"')
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        assert names == [f"1_AXIAL/{f.name}" for f in files]
        for name, path in zip(names, files, strict=True):
            assert archive.read(name) == path.read_bytes(), name

    wait_outcome(orthanc, share["id"], {"complete"})  # the server writes it just after the last byte
    listed = {s["id"]: s for s in orthanc.get("/nas/shares").json()}[share["id"]]
    assert listed["downloads"] == 1 and listed["last_download_at"] and not listed["revoked"]
    assert set(listed) == {"id", "label", "series", "created_at", "expires_at", "revoked", "downloads",
                           "last_download_at", "max_downloads", "passphrase", "layout", "about"}
    assert [(a["PatientName"], a["StudyDate"]) for a in listed["about"]] == [("DOE^JOHN", "20240102")]
    assert (listed["max_downloads"], listed["passphrase"], listed["layout"]) == (None, False, "folders")
    assert [row["outcome"] for row in audit(orthanc, share["id"])] == ["complete"]


def test_head_answers_the_headers_of_the_download(orthanc, corpus):
    share = create(orthanc, [corpus["plain"][0]])
    status, headers, body = fetch(share["url"], "HEAD")
    assert status == 200 and body == b""
    get_status, get_headers, get_body = fetch(share["url"])
    assert int(headers["content-length"]) == len(get_body)
    assert headers["content-disposition"] == get_headers["content-disposition"]
    wait_outcome(orthanc, share["id"], {"complete"})
    assert [row["outcome"] for row in audit(orthanc, share["id"])] == ["head", "complete"]


def test_default_expiry_and_bad_bodies(orthanc, corpus):
    key = corpus["plain"][0]
    share = create(orthanc, [key])
    listed = {s["id"]: s for s in orthanc.get("/nas/shares").json()}[share["id"]]
    created = time.mktime(time.strptime(listed["created_at"], "%Y-%m-%dT%H:%M:%SZ"))
    expires = time.mktime(time.strptime(share["expires_at"], "%Y-%m-%dT%H:%M:%SZ"))
    assert abs(expires - created - 24 * 3600) <= 1

    for body in [{}, {"series": []}, {"series": "abc"}, {"series": [1]}, {"series": [key], "expires_in_hours": 0},
                 {"series": [key], "expires_in_hours": -1}, {"series": [key], "expires_in_hours": 721},
                 {"series": [key], "expires_in_hours": True}, {"series": [key], "expires_in_hours": "24"},
                 {"series": [key], "label": 5}, {"series": [key], "label": "x" * 201}, {"series": [key], "x": 1}]:
        answer = orthanc.post("/nas/shares", json=body)
        assert answer.status_code == 400, body
        assert answer.json()["kind"] == "bad_request"
    answer = orthanc.post("/nas/shares", data="not json", headers={"Content-Type": "application/json"})
    assert answer.status_code == 400
    answer = orthanc.post("/nas/shares", json={"series": [key, "no-such-series"]})
    assert answer.status_code == 404 and "no-such-series" in answer.json()["error"]
    assert orthanc.delete("/nas/shares/no-such-share").status_code == 404


# -- refusals --------------------------------------------------------------------------
def test_expired_share_is_gone(orthanc, corpus):
    share = create(orthanc, [corpus["plain"][0]], expires_in_hours=2 / 3600)
    assert fetch(share["url"], "HEAD")[0] == 200
    time.sleep(2.2)
    status, headers, body = fetch(share["url"])
    assert status == 410 and b"expired" in body
    assert headers["referrer-policy"] == "no-referrer"
    assert audit(orthanc, share["id"])[-1]["outcome"] == "expired"
    assert f"share {share['id']}: refused a download to 127.0.0.1: the link is expired" in orthanc.log()


def test_revoked_share_is_gone(orthanc, corpus):
    share = create(orthanc, [corpus["plain"][0]])
    assert fetch(share["url"], "HEAD")[0] == 200
    answer = orthanc.delete(f"/nas/shares/{share['id']}")
    assert answer.status_code == 200 and answer.json()["revoked"] is True
    status, _, body = fetch(share["url"])
    assert status == 410 and b"revoked" in body
    assert {s["id"]: s for s in orthanc.get("/nas/shares").json()}[share["id"]]["revoked"] is True
    assert audit(orthanc, share["id"])[-1]["outcome"] == "revoked"


def test_unknown_token_is_not_found(orthanc):
    status, headers, _ = fetch(f"http://127.0.0.1:{orthanc.share_port}/share/{secrets.token_urlsafe(32)}",
                               source="127.0.0.4")
    assert status == 404 and headers["cache-control"] == "no-store"
    row = audit(orthanc)[-1]
    assert row["outcome"] == "unknown" and row["client"] == "127.0.0.4" and row["share_id"] is None


def test_guessing_tokens_is_refused(orthanc, corpus):
    share = create(orthanc, [corpus["plain"][0]])
    base = f"http://127.0.0.1:{orthanc.share_port}/share/"
    statuses = [fetch(base + secrets.token_urlsafe(32), source="127.0.0.2")[0] for _ in range(10)]
    assert statuses == [404] * 10
    status, headers, _ = fetch(base + secrets.token_urlsafe(32), source="127.0.0.2")
    assert status == 429 and int(headers["retry-after"]) > 0
    assert fetch(share["url"], "HEAD", source="127.0.0.2")[0] == 429  # even a good link, while refused
    assert fetch(share["url"], "HEAD")[0] == 200  # other addresses are not affected
    assert audit(orthanc)[-1]["outcome"] == "head"
    assert "refusing 127.0.0.2 for a while" in orthanc.log()


# -- what the zip holds ------------------------------------------------------------------------
def test_hostile_tag_values_and_file_names_give_safe_unique_entries(orthanc, corpus):
    key, files = corpus["hostile"]
    share = create(orthanc, [key])
    status, headers, body = fetch(share["url"])
    assert status == 200
    disposition = headers["content-disposition"]
    ascii_name = disposition.split('filename="')[1].split('"')[0]
    assert ascii_name.endswith(".zip") and all(c.isalnum() or c in "._-" for c in ascii_name)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        names = archive.namelist()
        assert len({n.lower() for n in names}) == len(files)
        for name in names:
            parts = name.split("/")
            assert len(parts) == 2 and not name.startswith("/") and "\\" not in name and ":" not in name
            assert all(p and p not in (".", "..") and not p.startswith(".") for p in parts), name
            assert "\u202e" not in name and ".." not in name
        contents = sorted(digest(archive.read(n)) for n in names)
    assert contents == sorted(digest(f.read_bytes()) for f in files)


def test_eight_downloads_at_once(orthanc, corpus):
    key, files = corpus["plain"]
    share = create(orthanc, [key])
    with ThreadPoolExecutor(8) as pool:  # eight colleagues: each address may download two at once
        answers = list(pool.map(lambda n: fetch(share["url"], source=f"127.0.1.{n + 1}"), range(8)))
    assert {status for status, _, _ in answers} == {200}
    on_nas = sorted(digest(f.read_bytes()) for f in files)
    for _, headers, body in answers:  # every colleague gets every file whole (the zips themselves may
        # differ: each entry is dated when its zip is made, and eight zips need not share a 2 s DOS time)
        assert int(headers["content-length"]) == len(body)
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            assert archive.testzip() is None
            assert sorted(digest(archive.read(n)) for n in archive.namelist()) == on_nas
    deadline = time.monotonic() + 10
    while any(row["outcome"] == "started" for row in audit(orthanc, share["id"])) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [row["outcome"] for row in audit(orthanc, share["id"])] == ["complete"] * 8


# -- downloads that end early ----------------------------------------------------------------------
def test_client_dropping_mid_download_frees_its_files(orthanc, corpus):
    key, files = corpus["big"]
    share = create(orthanc, [key])
    url = urlsplit(share["url"])
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(f"GET {url.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        received = 0
        while received < 25 * 1024:
            received += len(sock.recv(25 * 1024 - received))
    row = wait_outcome(orthanc, share["id"], {"disconnected", "complete"})
    assert row["outcome"] == "disconnected" and row["bytes_sent"] < sum(f.stat().st_size for f in files)
    nas_files = {str(f) for f in files}
    deadline = time.monotonic() + 5
    while {f.path for f in psutil.Process(orthanc.proc.pid).open_files()} & nas_files:
        assert time.monotonic() < deadline, "a NAS file stayed open after the client left"
        time.sleep(0.1)


def test_file_deleted_after_sharing_breaks_the_download(orthanc, corpus):
    key, files = corpus["fragile"]
    share = create(orthanc, [key])
    files[1].unlink()
    with requests.get(share["url"], stream=True, timeout=30) as answer:
        assert answer.status_code == 200
        expected = int(answer.headers["Content-Length"])
        body = b""
        try:
            for chunk in answer.iter_content(64 * 1024):
                body += chunk
        except requests.exceptions.ChunkedEncodingError:
            pass  # urllib3 2 raises on a body shorter than Content-Length; 1.26 just stops
    assert len(body) < expected
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(body))
    row = wait_outcome(orthanc, share["id"], {"broken", "complete"})
    assert row["outcome"] == "broken" and "fragile/IM00002.dcm is no longer on the NAS" in row["detail"]
    assert row["bytes_sent"] < expected
    assert "Traceback" not in orthanc.log()


def test_file_changed_after_indexing_breaks_the_download(orthanc, corpus):
    key, files = corpus["changed"]
    share = create(orthanc, [key])
    os.utime(files[2], ns=(time.time_ns(), time.time_ns()))  # same size, new mtime: rewritten in place
    with pytest.raises(http.client.IncompleteRead):
        fetch(share["url"])
    row = wait_outcome(orthanc, share["id"], {"broken", "complete"})
    assert row["outcome"] == "broken" and "changed/IM00003.dcm changed since it was indexed" in row["detail"]


# -- secrets stay secret -------------------------------------------------------------------------
def test_tokens_are_never_stored_listed_or_logged(orthanc, corpus):
    share = create(orthanc, [corpus["plain"][0]])
    fetch(share["url"])
    fetch(share["url"], "HEAD")
    orthanc.delete(f"/nas/shares/{share['id']}")
    fetch(share["url"])
    listing = orthanc.get("/nas/shares").text
    stored = b"".join(p.read_bytes() for p in orthanc.data.glob("shares.db*"))
    log = orthanc.log()
    assert share["id"] in listing and share["id"] in log
    assert hashlib.sha256(share["token"].encode()).digest() in stored  # what is kept instead
    for token in ISSUED:
        assert token not in listing
        assert token.encode() not in stored
        assert token not in log


# -- the listener's life inside Orthanc ------------------------------------------------------------
def test_port_in_use_is_reported_and_the_plugin_keeps_working(tmp_path_factory, corpus):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = _start(tmp_path_factory, corpus, "port-taken", port)
        try:
            assert f"the share listener cannot listen on 127.0.0.1:{port}" in server.log()
            answer = server.post("/nas/shares", json={"series": [corpus["plain"][0]]})
            assert answer.status_code == 201 and "not running" in answer.json()["warning"]
            ISSUED.append(answer.json()["token"])
            assert server.get("/nas/status").json()["phase"] == "done"
        finally:
            server.stop()


def test_orthanc_stops_promptly_during_a_download(tmp_path_factory, corpus):
    server = _start(tmp_path_factory, corpus, "stopping", free_port())
    try:
        share = server.post("/nas/shares", json={"series": [corpus["big"][0]]}).json()
        ISSUED.append(share["token"])
        with requests.get(share["url"], stream=True, timeout=30) as answer:
            next(answer.iter_content(64 * 1024))  # the download is under way, the client just waits
            started = time.monotonic()
            server.stop(timeout=20)
            assert time.monotonic() - started < 10
        assert "share listener stopped" in server.log()
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(share["url"], timeout=5)
    finally:
        server.stop()


# -- an authenticated download straight from Orthanc (streamed where the plugin can) ------------
def test_series_archive_streams_on_plugin_5_and_points_to_shares_on_4(orthanc, corpus):
    key, files = corpus["plain"]
    answer = orthanc.get(f"/nas/series/{key}/archive", headers={"Accept-Encoding": "identity"})
    if TARGET == "1.10":  # Python plugin 4.0: no StartStreamAnswer
        assert answer.status_code == 501
        assert answer.json()["kind"] == "bad_request" and "share" in answer.json()["hint"].lower()
        return
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(answer.content)) as zf:
        got = {posixpath.basename(n): zf.read(n) for n in zf.namelist()}
    assert got == {f.name: f.read_bytes() for f in files}
    assert orthanc.get("/nas/series/unknown-key/archive").status_code == 404
