"""Passphrases and download limits of share links, through a real Orthanc's share listener: curl and requests
as scripts use them, downloads cut off halfway, and what `GET /nas/shares` counts."""

from __future__ import annotations

import http.client
import io
import socket
import sqlite3
import subprocess
import threading
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from pydicom import dcmread
from pydicom.fileset import FileSet
from tests.support.dicom import write_series
from tests.support.orthanc import OrthancServer, free_port

from orthanc_nas.catalog import series_key

pytestmark = pytest.mark.integration

PASSPHRASE = "Grüne Äpfel 42"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("nas")
    small = write_series(root / "small", 4, SeriesInstanceUID="2.25.1001", pixel_bytes=10_000)
    big = write_series(root / "big", 16, SeriesInstanceUID="2.25.1002", pixel_bytes=4 * 1024 * 1024, sparse=True)
    other = write_series(root / "other" / "Ünïcode name", 3, SeriesInstanceUID="2.25.1003", PatientID="P-2",
                         PatientName="Åström^Sven", charset="ISO_IR 192", SeriesDescription="Lung", SeriesNumber=7)
    return {"small": (series_key({"SeriesInstanceUID": "2.25.1001"}, ""), small),
            "big": (series_key({"SeriesInstanceUID": "2.25.1002"}, ""), big),
            "other": (series_key({"SeriesInstanceUID": "2.25.1003"}, ""), other)}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, corpus):
    work = tmp_path_factory.mktemp("orthanc")
    root = corpus["small"][1][0].parent.parent
    server = OrthancServer(work, nas={"Connection": {"Type": "local", "Path": str(root)},
                                      "DataDirectory": str(work / "nasdata"), "ShareServer": {"Port": free_port()}},
                           auth=True)
    server.start()
    server.data = work / "nasdata"
    assert server.index()["phase"] == "done"
    yield server
    server.stop()


def create(orthanc: OrthancServer, key: str, **body) -> dict:
    answer = orthanc.post("/nas/shares", json={"series": [key], "layout": "folders", **body})
    assert answer.status_code == 201, answer.text
    return answer.json()


def listed(orthanc: OrthancServer, share_id: str) -> dict:
    return {s["id"]: s for s in orthanc.get("/nas/shares").json()}[share_id]


def outcomes(orthanc: OrthancServer, share_id: str) -> list[str]:
    conn = sqlite3.connect(f"file:{orthanc.data / 'shares.db'}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("SELECT outcome FROM audit WHERE share_id=? ORDER BY id", (share_id,))]
    finally:
        conn.close()


def wait_for(orthanc: OrthancServer, share_id: str, outcome: str, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while outcome not in outcomes(orthanc, share_id):
        assert time.monotonic() < deadline, outcomes(orthanc, share_id)
        time.sleep(0.1)
    return outcomes(orthanc, share_id)


def curl(*args: str) -> tuple[int, dict, bytes]:
    """curl as a script would call it: status, headers (lower-case names), body."""
    done = subprocess.run(["curl", "-sS", "-D", "-", *args], capture_output=True, timeout=60, check=True)
    head, _, body = done.stdout.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def unpacked(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {name.rpartition("/")[2]: archive.read(name) for name in archive.namelist()}


def cut_off_halfway(url: str, source: str = "127.0.0.1") -> int:
    """Start a download and hang up after half of it; returns the bytes received."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30, source_address=(source, 0)) as sock:
        sock.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, _, received = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        got = len(received)
        while got < length // 2:
            got += len(sock.recv(1024 * 1024))
    return got


# -- the passphrase, as scripts send it ---------------------------------------------------------------
def test_curl_and_requests_send_the_passphrase_as_basic_authentication(orthanc, corpus):
    key, files = corpus["small"]
    share = create(orthanc, key, passphrase=PASSPHRASE)
    assert share["passphrase"] is True and "Grüne" not in str(share)
    expected = {f.name: f.read_bytes() for f in files}

    status, headers, body = curl(share["url"])
    assert status == 401 and headers["www-authenticate"].startswith("Basic ") and b"passphrase" in body
    status, headers, body = curl("-u", f":{PASSPHRASE}", share["url"])
    assert status == 200 and headers["content-type"] == "application/zip" and unpacked(body) == expected
    status, _, body = curl("-u", f"anyone:{PASSPHRASE}", share["url"] + "/download")  # the user name is ignored
    assert status == 200 and unpacked(body) == expected
    assert curl("-u", ":Grune Apfel 42", share["url"])[0] == 401

    answer = requests.get(share["url"], auth=("", PASSPHRASE), timeout=30)
    assert answer.status_code == 200 and unpacked(answer.content) == expected
    assert requests.head(share["url"], auth=("", PASSPHRASE), timeout=30).status_code == 200
    assert requests.get(share["url"], timeout=30).status_code == 401
    assert requests.get(share["url"], auth=("", "wrong passphrase"), timeout=30).status_code == 401

    wait_for(orthanc, share["id"], "complete")
    seen = outcomes(orthanc, share["id"])
    assert seen.count("wrong_passphrase") == 2 and seen.count("passphrase_asked") == 2
    assert listed(orthanc, share["id"])["downloads"] == 3
    stored = b"".join(p.read_bytes() for p in orthanc.data.glob("shares.db*"))
    assert PASSPHRASE.encode() not in stored and PASSPHRASE not in orthanc.log()


def test_wrong_passphrases_count_like_wrong_links(orthanc, corpus):
    share = create(orthanc, corpus["small"][0], passphrase=PASSPHRASE)
    statuses = [curl("--interface", "127.0.0.7", "-u", f":guess {n}", share["url"])[0] for n in range(10)]
    assert statuses == [401] * 10
    status, headers, _ = curl("--interface", "127.0.0.7", "-u", f":{PASSPHRASE}", share["url"])
    assert status == 429 and int(headers["retry-after"]) > 0  # refused now, even with the right one
    assert curl("-u", f":{PASSPHRASE}", "-I", share["url"])[0] == 200  # other addresses are not affected
    assert "refusing 127.0.0.7 for a while after 10 wrong links or passphrases" in orthanc.log()


# -- max_downloads --------------------------------------------------------------------------------------
def test_max_downloads_counts_completed_downloads_and_not_one_cut_off_halfway(orthanc, corpus):
    key, files = corpus["big"]
    share = create(orthanc, key, max_downloads=1)
    assert share["max_downloads"] == 1
    total = sum(f.stat().st_size for f in files)
    received = cut_off_halfway(share["url"])
    assert received < total
    wait_for(orthanc, share["id"], "disconnected")
    assert listed(orthanc, share["id"])["downloads"] == 0

    # the link still works: a whole download, which is counted
    with requests.get(share["url"], stream=True, timeout=60) as answer:
        assert answer.status_code == 200
        size = sum(len(chunk) for chunk in answer.iter_content(1024 * 1024))
    assert size == int(answer.headers["Content-Length"]) > total
    assert wait_for(orthanc, share["id"], "complete")[-1] == "complete"
    assert (listed(orthanc, share["id"])["downloads"], listed(orthanc, share["id"])["max_downloads"]) == (1, 1)

    # then it is used up, for scripts and for HEAD too
    status, _, body = curl(share["url"])
    assert status == 410 and b"downloaded as many times as its sender allowed" in body
    assert curl("-I", share["url"] + "/download")[0] == 410
    assert outcomes(orthanc, share["id"])[-2:] == ["complete", "used_up"]  # both refusals: one row (counted)


def test_the_last_download_allowed_is_not_run_twice_at_once(orthanc, corpus):
    key, _ = corpus["big"]
    share = create(orthanc, key, max_downloads=1)
    parts = urlsplit(share["url"])
    first = socket.create_connection((parts.hostname, parts.port), timeout=30)
    try:
        first.sendall(f"GET {parts.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert first.recv(65536).startswith(b"HTTP/1.1 200")  # under way; this client takes no more for now
        status, headers, body = curl(share["url"])
        assert status == 409 and headers["retry-after"] and b"under way" in body
    finally:
        first.close()  # cut off: not counted, so the link works again
    wait_for(orthanc, share["id"], "disconnected")
    answer = requests.get(share["url"], timeout=60)
    assert answer.status_code == 200 and len(answer.content) == int(answer.headers["Content-Length"])
    assert wait_for(orthanc, share["id"], "complete").count("busy") == 1


def test_several_clients_at_once_never_exceed_the_limit(orthanc, corpus):
    key, _ = corpus["small"]
    share = create(orthanc, key, max_downloads=2)
    statuses: list[int] = []
    barrier = threading.Barrier(6)

    def get(n: int) -> None:  # six clients, each from an address of its own (each may download two at once)
        url = urlsplit(share["url"])
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60, source_address=(f"127.0.2.{n}", 0))
        barrier.wait()
        try:
            conn.request("GET", url.path)
            answer = conn.getresponse()
            answer.read()
            statuses.append(answer.status)
        finally:
            conn.close()

    threads = [threading.Thread(target=get, args=(n + 1,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count(200) <= 2 and set(statuses) <= {200, 409, 410}
    deadline = time.monotonic() + 15
    while "started" in outcomes(orthanc, share["id"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    completed = outcomes(orthanc, share["id"]).count("complete")
    assert completed == statuses.count(200) and listed(orthanc, share["id"])["downloads"] == completed


def test_bad_passphrases_and_limits_are_refused_at_creation(orthanc, corpus):
    key = corpus["small"][0]
    for body, field in [({"passphrase": "12345"}, "passphrase"), ({"passphrase": 123456}, "passphrase"),
                        ({"max_downloads": 0}, "max_downloads"), ({"max_downloads": "2"}, "max_downloads"),
                        ({"layout": "zip"}, "layout")]:
        answer = orthanc.post("/nas/shares", json={"series": [key], **body})
        assert answer.status_code == 400 and field in answer.json()["error"], (body, answer.text)


def test_a_browser_gets_the_page_and_anyone_gets_the_zip_from_download(orthanc, corpus):
    key, files = corpus["small"]
    share = create(orthanc, key)
    html = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"}
    page = requests.get(share["url"], headers=html, timeout=30)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "Download" in page.text and "<script" not in page.text
    zipped = requests.get(share["url"] + "/download", headers=html, timeout=30)
    assert zipped.headers["Content-Type"] == "application/zip"
    assert unpacked(zipped.content) == {f.name: f.read_bytes() for f in files}
    assert requests.post(share["url"] + "/download", timeout=30).status_code == 404
    assert Path(urlsplit(share["url"]).path).parts[:2] == ("/", "share")


# -- the DICOMDIR layout (the default) ---------------------------------------------------------------------
def test_the_default_zip_is_a_file_set_that_pydicom_and_dcmdump_read(orthanc, corpus, tmp_path):
    (small_key, small), (other_key, other) = corpus["small"], corpus["other"]
    answer = orthanc.post("/nas/shares", json={"series": [small_key, other_key]})
    assert answer.status_code == 201 and answer.json()["layout"] == "dicomdir"
    share = answer.json()
    head = requests.head(share["url"], timeout=30)
    got = requests.get(share["url"], timeout=30)
    assert got.status_code == 200 and len(got.content) == int(got.headers["Content-Length"])
    assert head.headers["Content-Length"] == got.headers["Content-Length"]
    with zipfile.ZipFile(io.BytesIO(got.content)) as archive:
        assert archive.testzip() is None
        names = archive.namelist()
        archive.extractall(tmp_path)
    assert names[0] == "DICOMDIR" and len(names) == 1 + len(small) + len(other)
    for name in names[1:]:  # PS3.10 8.2: at most 8 components of at most 8 characters A-Z 0-9 _
        assert all(len(part) <= 8 and part.isalnum() and part.isupper() for part in name.split("/")), name

    file_set = FileSet(tmp_path / "DICOMDIR")
    nas = {dcmread(path, stop_before_pixels=True).SOPInstanceUID: path.read_bytes() for path in small + other}
    assert len(file_set) == len(nas)
    for instance in file_set:  # every record's file is there, byte for byte the NAS file
        assert Path(instance.path).read_bytes() == nas[instance.SOPInstanceUID]
    assert sorted(str(v) for v in file_set.find_values("PatientName")) == ["DOE^JOHN", "Åström^Sven"]
    (lung,) = [n._record for n in file_set._tree if n.record_type == "SERIES" and n._record.SeriesNumber == 7]
    assert lung.SeriesDescription == "Lung"

    dump = subprocess.run(["dcmdump", "+P", "DirectoryRecordType", "+P", "ReferencedFileID", "+P", "PatientID",
                           str(tmp_path / "DICOMDIR")], capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0 and "E:" not in dump.stderr, dump.stderr
    assert dump.stdout.count("[IMAGE]") == len(nas) and dump.stdout.count("[PATIENT]") == 2
    assert "[PT000001\\ST000000\\SE000000\\IM000002]" in dump.stdout and "[P-2]" in dump.stdout
    listed(orthanc, share["id"])  # listed as any other share


def test_the_folders_layout_keeps_the_readable_names(orthanc, corpus):
    key, files = corpus["other"]
    share = create(orthanc, key)  # layout "folders"
    with zipfile.ZipFile(io.BytesIO(requests.get(share["url"], timeout=30).content)) as archive:
        assert archive.namelist() == [f"7_Lung/{f.name}" for f in files]
