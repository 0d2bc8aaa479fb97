"""Hostile requests and a hostile NAS, against a real Orthanc with authentication on.

What an attacker tried: a small JSON body nested deep enough to overflow the native stack of Orthanc's
HTTP thread (also as a field of a multipart form), requests forged by another web site, symbolic links
on the NAS leading out of its root (also one swapped in after indexing), a header of deeply nested
sequences, revoked links asked for again and again, a lone surrogate, a 404 echoing any key. Each test
fails with its defence removed (for the deep JSON: Orthanc dies).
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import sqlite3
import stat
import time
import zipfile
from urllib.parse import urlsplit

import pytest
import requests
from tests.support.dicom import write_deeply_nested, write_series
from tests.support.orthanc import OrthancServer, free_port

from orthanc_nas.catalog import series_key

pytestmark = pytest.mark.integration

JSON_ROUTES = [("POST", "/nas/index"), ("POST", "/nas/shares"), ("PUT", "/nas/config"), ("POST", "/nas/config/test")]
DEEP_JSON = "[" * 5000 + "]" * 5000  # ~10 KB; 550 levels already killed Orthanc 1.10
OUTSIDE_MARK = b"OUTSIDE-THE-NAS-ROOT"


def _key(uid: str) -> str:
    return series_key({"SeriesInstanceUID": uid}, "")


@pytest.fixture(scope="module")
def nas(tmp_path_factory) -> dict:
    """A NAS root with links out of it (to a folder, to a file), links inside it, a deep header, and a
    series whose file is swapped for a link after indexing."""
    base = tmp_path_factory.mktemp("hostile")
    root, outside = base / "root", base / "outside"
    write_series(outside / "secret", 2, PatientID="OUTSIDE", SeriesInstanceUID="2.25.1001")
    (outside / "passwd").write_bytes(OUTSIDE_MARK * 100)
    write_series(root / "plain", 3, PatientID="P1", SeriesInstanceUID="2.25.1002")
    write_series(root / "swap", 2, PatientID="P2", SeriesInstanceUID="2.25.1003")
    write_deeply_nested(root / "deep" / "deep.dcm", 5000, PatientID="P3", SeriesInstanceUID="2.25.1004")
    # large enough that a client which stops reading holds its download thread (sparse: no disk used)
    write_series(root / "big", 4, PatientID="P4", SeriesInstanceUID="2.25.1005", pixel_bytes=16 << 20, sparse=True)
    os.symlink(outside / "secret", root / "out-folder")
    os.symlink(outside / "secret" / "IM00001.dcm", root / "out-file.dcm")
    os.symlink(outside, root / "out-all")
    os.symlink(root / "plain", root / "in-folder")
    os.symlink(root / "plain" / "IM00001.dcm", root / "in-file.dcm")
    return {"root": root, "outside": outside, "plain": _key("2.25.1002"), "swap": _key("2.25.1003"),
            "outside_key": _key("2.25.1001"), "big": _key("2.25.1005")}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, nas):
    work = tmp_path_factory.mktemp("orthanc")
    server = OrthancServer(work, nas={"Connection": {"Type": "local", "Path": str(nas["root"])},
                                      "ShareServer": {"Port": free_port()}}, auth=True)
    server.start()
    server.data = work / "storage" / "nas"
    server.status = server.index()
    yield server
    server.stop()


def alive(orthanc: OrthancServer) -> bool:
    return orthanc.proc.poll() is None and orthanc.get("/system").status_code == 200


# -- 1. nothing crashes Orthanc ------------------------------------------------------------------------
@pytest.mark.parametrize("method, path", JSON_ROUTES)
def test_deeply_nested_json_is_refused_and_orthanc_keeps_running(orthanc, method, path):
    answer = orthanc.session.request(method, orthanc.url + path, data=DEEP_JSON,
                                     headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 400, answer.text
    assert "nested deeper than" in answer.json()["error"]
    nested_in_object = '{"series": ' + DEEP_JSON + "}"
    answer = orthanc.session.request(method, orthanc.url + path, data=nested_in_object,
                                     headers={"Content-Type": "application/json"}, timeout=30)
    assert answer.status_code == 400 and "nested deeper than" in answer.json()["error"]
    assert alive(orthanc)


@pytest.mark.parametrize("method, path", JSON_ROUTES)
def test_a_json_multipart_field_is_refused_and_orthanc_keeps_running(orthanc, nas, method, path):
    """Orthanc 1.10 hands each field of a multipart form (what an HTML form of any site can send) to the
    plugin as the body, then answers 200 itself whatever the plugin said: what counts is that nothing
    was parsed nor done."""
    for field in (DEEP_JSON, json.dumps({"series": [nas["plain"]], "label": "forged"})):
        answer = orthanc.session.request(method, orthanc.url + path,
                                         files={"field": ("x.json", field, "application/json")}, timeout=30)
        assert answer.status_code in (200, 415), answer.text
        assert alive(orthanc)
    assert not [s for s in orthanc.get("/nas/shares").json() if s["label"] == "forged"]
    assert orthanc.get("/nas/status").json()["running"] is False


def test_a_header_of_deeply_nested_sequences_is_a_counted_file_error(orthanc):
    """The header is parsed by pydicom in a parse worker process: the recursion ends at Python's limit
    (RecursionError), the file is counted with its reason and the run finishes."""
    status = orthanc.status
    assert status["phase"] == "done"
    reasons = {s["path"]: s["error"] for s in status["error_samples"]}
    assert "RecursionError" in reasons["deep/deep.dcm"]
    assert alive(orthanc)


def test_a_lone_surrogate_is_a_400_naming_the_field(orthanc, nas):
    body = '{"series": ["' + nas["plain"] + '"], "label": "x\\ud800y"}'
    answer = orthanc.post("/nas/shares", data=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "'label'" in answer.json()["error"], answer.text


def test_a_404_does_not_echo_a_long_key(orthanc):
    in_path = "k" * 4000  # Orthanc's HTTP server refuses longer request lines itself
    for answer in (orthanc.get(f"/nas/series/{in_path}"), orthanc.delete(f"/nas/shares/{in_path}"),
                   orthanc.get(f"/nas/{in_path}"), orthanc.post("/nas/shares", json={"series": ["k" * 100_000]})):
        assert answer.status_code == 404 and len(answer.content) < 1000, answer.text[:200]


# -- 2. no request forged by another site ---------------------------------------------------------------
@pytest.mark.parametrize("ctype, data", [(None, b'{"series": []}'), (None, b""), ("text/plain", b"{}"),
                                         ("application/x-www-form-urlencoded", b"a=1"),
                                         ("application/json-seq", b"{}")])
def test_state_changing_routes_take_application_json_exactly(orthanc, ctype, data):
    headers = {"Content-Type": ctype} if ctype else {}
    for method, path in JSON_ROUTES:
        request = orthanc.session.prepare_request(
            requests.Request(method, orthanc.url + path, data=data, headers=headers))
        if ctype is None:
            request.headers.pop("Content-Type", None)
        answer = orthanc.session.send(request, timeout=30)
        assert answer.status_code == 415, (method, path, ctype, answer.text)


@pytest.mark.parametrize("headers", [{"Sec-Fetch-Site": "cross-site"},
                                     {"Sec-Fetch-Site": "same-site", "Origin": "http://other.example"},
                                     {"Origin": "http://evil.example"}, {"Origin": "null"}])
def test_requests_a_browser_marks_as_cross_site_change_nothing(orthanc, nas, headers):
    before = len(orthanc.get("/nas/shares").json())
    answer = orthanc.post("/nas/shares", json={"series": [nas["plain"]], "label": "forged"}, headers=headers)
    assert answer.status_code == 403 and answer.json()["kind"] == "permission", answer.text
    answer = orthanc.post("/nas/index", json={"full": True}, headers=headers)
    assert answer.status_code == 403
    assert len(orthanc.get("/nas/shares").json()) == before
    assert orthanc.get("/nas/status").json()["running"] is False


def test_requests_of_orthancs_own_pages_pass_also_behind_a_reverse_proxy(orthanc, nas):
    own = urlsplit(orthanc.url).netloc
    cases = [{"Sec-Fetch-Site": "same-origin", "Origin": orthanc.url},
             {"Origin": orthanc.url},  # a browser without Fetch Metadata
             {"Origin": f"http://{own}", "Sec-Fetch-Site": "same-site"},
             # a proxy that rewrites Host says where the browser went in X-Forwarded-Host
             {"Origin": "https://pacs.example.org", "X-Forwarded-Host": "pacs.example.org"},
             {"Origin": "https://pacs.example.org", "X-Forwarded-Host": "pacs.example.org:443"},
             {"Sec-Fetch-Site": "same-origin", "Origin": "https://pacs.example.org"},  # any proxy
             {}]  # a program: curl, a script
    for headers in cases:
        answer = orthanc.post("/nas/shares", json={"series": [nas["plain"]], "label": "own"}, headers=headers)
        assert answer.status_code == 201, (headers, answer.text)
        assert orthanc.delete(f"/nas/shares/{answer.json()['id']}", headers=headers).status_code == 200


# -- 3. nothing leaves the NAS root ------------------------------------------------------------------------
def test_links_out_of_the_root_are_not_followed_nor_links_inside_counted_twice(orthanc, nas):
    status = orthanc.status
    # plain (3) + swap (2) + deep (1) + big (4): nothing behind the links
    assert status["enumerated_files"] == 10, status
    assert not [s for s in status["error_samples"] if s["path"].startswith(("out-", "in-"))]
    assert "passwd" not in json.dumps(status) and "secret" not in json.dumps(status)
    assert orthanc.get("/nas/search", params={"q": "OUTSIDE"}).json() == []
    files = orthanc.get(f"/nas/series/{nas['plain']}").json()["files"]
    assert sorted(f["path"] for f in files) == ["plain/IM00001.dcm", "plain/IM00002.dcm", "plain/IM00003.dcm"]
    assert orthanc.post("/nas/shares", json={"series": [nas["outside_key"]]}).status_code == 404


def test_a_file_swapped_for_a_link_after_indexing_is_not_served(orthanc, nas):
    share = orthanc.post("/nas/shares", json={"series": [nas["swap"]]}).json()
    victim = nas["root"] / "swap" / "IM00002.dcm"
    st = victim.stat()
    target = nas["outside"] / "same-size"
    target.write_bytes((OUTSIDE_MARK * (st.st_size // len(OUTSIDE_MARK) + 1))[:st.st_size])
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime as the indexed file
    victim.unlink()
    os.symlink(target, victim)
    url = urlsplit(share["url"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    conn.request("GET", url.path)
    answer = conn.getresponse()
    body = b""
    try:
        body = answer.read()
    except http.client.IncompleteRead as exc:
        body = exc.partial
    finally:
        conn.close()
    assert OUTSIDE_MARK not in body
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(body))
    deadline = time.monotonic() + 15
    while True:
        rows = _audit(orthanc, share["id"])
        if rows and rows[-1]["outcome"] != "started" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert rows[-1]["outcome"] == "broken" and "swap/IM00002.dcm" in rows[-1]["detail"], rows


def _audit(orthanc: OrthancServer, share_id: str | None = None) -> list[dict]:
    conn = sqlite3.connect(f"file:{orthanc.data / 'shares.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        where, args = ("WHERE share_id=?", (share_id,)) if share_id else ("", ())
        return [dict(r) for r in conn.execute(f"SELECT * FROM audit {where} ORDER BY id", args)]
    finally:
        conn.close()


# -- 6. a revoked link asked for again and again ------------------------------------------------------------
def test_requests_for_a_revoked_link_are_counted_and_collapsed(orthanc, nas):
    share = orthanc.post("/nas/shares", json={"series": [nas["plain"]]}).json()
    assert orthanc.delete(f"/nas/shares/{share['id']}").status_code == 200
    url = urlsplit(share["url"])
    statuses = []
    for _ in range(50):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30, source_address=("127.0.0.9", 0))
        conn.request("GET", url.path)
        statuses.append(conn.getresponse().status)
        conn.close()
    assert statuses[:10] == [410] * 10 and set(statuses[10:]) == {429}  # counted like wrong links
    rows = [r for r in _audit(orthanc) if r["client"] == "127.0.0.9"]
    assert len(rows) <= 2, rows  # one collapsed row for the 410s, one for the 429s
    assert sum(int(r["detail"].split()[0]) for r in rows) == 50
    assert orthanc.log().count(f"share {share['id']}: refused a download to 127.0.0.9") == 1


# -- 4. the share listener cannot be starved by one address -------------------------------------------------
def _download(url: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60, source_address=(source, 0))
    try:
        conn.request("GET", parts.path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def _status_line(sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\r\n"):
        data = sock.recv(1)
        if not data:
            break
        line += data
    return line


def test_clients_that_never_read_hold_no_more_than_their_share_of_downloads(orthanc, nas):
    big = orthanc.post("/nas/shares", json={"series": [nas["big"]]}).json()
    plain = orthanc.post("/nas/shares", json={"series": [nas["plain"]]}).json()
    url = urlsplit(big["url"])
    hogs = []
    try:
        for _ in range(8):  # as many as the listener has download threads, all from one address
            sock = socket.create_connection((url.hostname, url.port), timeout=30, source_address=("127.0.0.3", 0))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET {url.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            hogs.append(sock)
        lines = [_status_line(sock) for sock in hogs]  # then they read nothing more
        assert sum(b" 200 " in line for line in lines) == 2, lines
        assert sum(b" 429 " in line for line in lines) == 6, lines
        status, body = _download(plain["url"])  # another address is served meanwhile
        assert status == 200
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            assert len(set(archive.namelist()) - {"DICOMDIR"}) == 3 and archive.testzip() is None
    finally:
        for sock in hogs:
            sock.close()


def test_slow_requests_cannot_take_every_connection(orthanc, nas):
    share = orthanc.post("/nas/shares", json={"series": [nas["plain"]]}).json()
    url = urlsplit(share["url"])
    slow = []
    try:
        for _ in range(100):  # waitress's whole connection limit, one byte at a time ("slowloris")
            sock = socket.create_connection((url.hostname, url.port), timeout=30, source_address=("127.0.0.2", 0))
            sock.sendall(b"G")
            slow.append(sock)
        status, body = _download(share["url"])  # another address is served meanwhile
        assert status == 200 and zipfile.ZipFile(io.BytesIO(body)).testzip() is None
        # the connections beyond the address's share were answered 429 and closed at once...
        open_ = []
        for sock in slow:
            sock.settimeout(0.5)
            try:
                data = sock.recv(200)
                assert data == b"" or data.startswith(b"HTTP/1.1 429 "), data
            except TimeoutError:
                open_.append(sock)
        assert 0 < len(open_) <= 16, len(open_)
        # ...and the others are cut when their request has not arrived in time, however they trickle
        deadline = time.monotonic() + 120
        while open_ and time.monotonic() < deadline:
            for sock in list(open_):
                try:
                    sock.sendall(b"E")
                    if sock.recv(1, socket.MSG_DONTWAIT) == b"":
                        open_.remove(sock)
                except (BlockingIOError, TimeoutError):  # still open, nothing to read
                    pass
                except OSError:
                    open_.remove(sock)
            time.sleep(2)
        assert not open_, f"{len(open_)} slow connections still open"
        assert "whose request did not arrive within" in orthanc.log()
    finally:
        for sock in slow:
            sock.close()


# -- 5. settings from the web stay within AllowedRoots and AllowedHosts -----------------------------------------
@pytest.fixture(scope="module")
def confined(tmp_path_factory, nas):
    """An Orthanc whose settings from the web may use one folder and one SMB host."""
    work = tmp_path_factory.mktemp("confined")
    allowed = work / "mnt"
    (allowed / "nas2").mkdir(parents=True)
    os.symlink("/", allowed / "escape")  # a link inside an allowed folder that leads out of it
    server = OrthancServer(work, nas={"Connection": {"Type": "local", "Path": str(nas["root"])},
                                      "AllowedRoots": [str(allowed)], "AllowedHosts": ["nas.example"],
                                      "ShareServer": {"Port": free_port()}}, auth=True)
    server.start()
    server.allowed = allowed
    yield server
    server.stop()


@pytest.mark.parametrize("path", ["/", "/root", "/proc/self", "/etc", "{allowed}/../..", "{allowed}/escape",
                                  "{allowed}/escape/etc", "{allowed}-sibling", "relative/path"])
def test_folders_outside_the_allowed_roots_are_refused_before_they_are_touched(confined, path):
    path = path.format(allowed=confined.allowed)
    for method, route in (("POST", "/nas/config/test"), ("PUT", "/nas/config")):
        answer = confined.session.request(method, confined.url + route,
                                          json={"Connection": {"Type": "local", "Path": path}}, timeout=30)
        assert answer.status_code == 400, (method, path, answer.text)
        body = answer.json()
        assert body["field"] == "Connection.Path" and "outside the folders" in body["error"]
        assert "entries" not in body and "AllowedRoots" in body["hint"]


def test_the_allowed_roots_and_orthanc_json_s_own_folder_are_allowed(confined, nas):
    for path in (confined.allowed / "nas2", nas["root"] / "plain"):
        answer = confined.post("/nas/config/test", json={"Connection": {"Type": "local", "Path": str(path)}})
        assert answer.status_code == 200 and answer.json()["ok"] is True, answer.text
    answer = confined.put("/nas/config", json={"Connection": {"Type": "local", "Path": str(nas["root"])}})
    assert answer.status_code == 200, answer.text
    settings = confined.get("/nas/config").json()
    assert settings["AllowedRoots"] == [str(confined.allowed)] and settings["AllowedHosts"] == ["nas.example"]


def test_smb_hosts_outside_the_allowed_hosts_are_refused_before_any_connection(confined):
    with socket.socket() as trap:  # an SMB "server" that records whether anything connected
        trap.bind(("127.0.0.1", 0))
        trap.listen()
        trap.settimeout(0.5)
        smb = {"Type": "smb", "Host": "127.0.0.1", "Port": trap.getsockname()[1], "Share": "d",
               "Username": "u", "Password": "p"}
        for method, route in (("POST", "/nas/config/test"), ("PUT", "/nas/config")):
            answer = confined.session.request(method, confined.url + route, json={"Connection": smb}, timeout=30)
            assert answer.status_code == 400, answer.text
            assert answer.json()["field"] == "Connection.Host" and "AllowedHosts" in answer.json()["hint"]
        with pytest.raises(TimeoutError):
            trap.accept()


def test_a_saved_password_is_never_sent_to_another_port(tmp_path):
    with socket.socket() as trap:
        trap.bind(("127.0.0.1", 0))
        trap.listen()
        trap.settimeout(0.5)
        saved = {"Type": "smb", "Host": "127.0.0.1", "Port": 1, "Share": "d", "Username": "u", "Password": "p"}
        server = OrthancServer(tmp_path, nas={"Connection": saved, "ShareServer": {"Port": free_port()}})
        server.start()
        try:
            other_port = {**saved, "Port": trap.getsockname()[1]}
            del other_port["Password"]
            answer = server.post("/nas/config/test", json={"Connection": other_port})
            assert answer.status_code == 400 and answer.json()["field"] == "Connection.Password", answer.text
            with pytest.raises(TimeoutError):
                trap.accept()
        finally:
            server.stop()


# -- 6. files of patient data are the Orthanc account's only ----------------------------------------------------
def test_index_shares_and_status_files_are_0600_whatever_the_umask(tmp_path, nas):
    old = os.umask(0)  # Orthanc inherits it: without care, files would be created 0666
    try:
        server = OrthancServer(tmp_path, nas={"Connection": {"Type": "local", "Path": str(nas["root"] / "plain")},
                                              "ShareServer": {"Port": free_port()}})
        server.start()
    finally:
        os.umask(old)
    try:
        server.index()
        key = nas["plain"]
        assert server.post("/nas/shares", json={"series": [key]}).status_code == 201
        data = tmp_path / "storage" / "nas"
        names = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.iterdir()}
        for name in ("index.db", "shares.db", "index_status.json"):
            assert names.pop(name) == 0o600, name
        assert all(mode == 0o600 for name, mode in names.items() if name.endswith(("-wal", "-shm"))), names
    finally:
        server.stop()
