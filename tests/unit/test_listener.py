"""The share listener on waitress, without Orthanc: routes, refusals, stopping, and no token in any log."""

from __future__ import annotations

import http.client
import io
import logging
import os
import socket
import threading
import time
import zipfile

import pytest

from orthanc_nas import share_server
from orthanc_nas.app import NasApp
from orthanc_nas.catalog_writer import CatalogWriter
from orthanc_nas.config import parse_settings
from orthanc_nas.errors import FileChanged
from orthanc_nas.share_server import RedactingHandler, ShareListener, redact, route_waitress_logs
from orthanc_nas.sources import FileEntry


@pytest.fixture
def app(tmp_path):
    """A NasApp whose index holds one series of 4 files of 3 MB, its listener on a free port."""
    nas = tmp_path / "nas"
    entries = []
    for n in range(4):
        path = nas / "ct" / f"IM{n}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(3_000_000))
        st = path.stat()
        entries.append((FileEntry(f"ct/IM{n}.dcm", st.st_size, st.st_mtime_ns),
                        {"SeriesInstanceUID": "1.2.3", "InstanceNumber": n, "PatientName": "DOE^J"}, None))
    settings = parse_settings({"Connection": {"Type": "local", "Path": str(nas)}, "DataDirectory": str(tmp_path / "d"),
                               "ShareServer": {"Port": 0}})
    app = NasApp(settings)
    writer = CatalogWriter(app.catalog)
    writer.begin_run()
    writer.write(entries)
    writer.close()
    assert app.start_share_listener()
    yield app
    app.close()


def share(app) -> tuple[str, str]:
    key = app.catalog.reader().execute("SELECT series_key FROM series").fetchone()[0]
    created, token = app.shares.create([key], 1)
    return created.id, token


def request(app, method: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", app.listener.port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


def audit_clients(app) -> list[tuple[str, str]]:
    return [tuple(row) for row in app.shares._conn().execute("SELECT client, outcome FROM audit ORDER BY id")]


def guess_ten_times(app, forwarded_for: str) -> list[int]:
    return [request(app, "GET", "/share/" + "x" * 43, {"X-Forwarded-For": forwarded_for})[0] for _ in range(10)]


def test_behind_a_trusted_proxy_the_forwarded_client_is_counted_and_audited(tmp_path):
    app = NasApp(parse_settings({"DataDirectory": str(tmp_path), "ShareServer": {
        "Host": "127.0.0.1", "Port": 0, "TrustedProxy": "127.0.0.1"}}))
    assert app.start_share_listener()
    try:
        assert guess_ten_times(app, "10.1.1.1, 198.51.100.7") == [404] * 10  # the proxy appends the client
        assert request(app, "GET", "/share/" + "y" * 43, {"X-Forwarded-For": "198.51.100.7"})[0] == 429
        # the other colleagues behind the same proxy are not refused
        assert request(app, "GET", "/share/" + "z" * 43, {"X-Forwarded-For": "198.51.100.8"})[0] == 404
        assert audit_clients(app)[-3:] == [("198.51.100.7", "unknown"), ("198.51.100.7", "rate_limited"),
                                           ("198.51.100.8", "unknown")]
    finally:
        app.close()


def test_without_a_trusted_proxy_x_forwarded_for_is_ignored(app):
    assert guess_ten_times(app, "198.51.100.7") == [404] * 10
    assert request(app, "GET", "/share/" + "y" * 43, {"X-Forwarded-For": "198.51.100.9"})[0] == 429
    assert {client for client, _ in audit_clients(app)} == {"127.0.0.1"}


def test_a_refused_address_is_one_audit_row_however_many_requests(app):
    assert guess_ten_times(app, "") == [404] * 10
    assert [request(app, "GET", "/share/" + "y" * 43)[0] for _ in range(25)] == [429] * 25
    with app.shares._conn() as db:
        rows = db.execute("SELECT outcome, detail, at, finished_at FROM audit WHERE outcome='rate_limited'").fetchall()
    assert len(rows) == 1 and rows[0]["detail"] == "25 requests refused"
    assert rows[0]["finished_at"] >= rows[0]["at"]


def test_a_client_that_stops_reading_is_cut_off(tmp_path, monkeypatch):
    monkeypatch.setattr(share_server, "STALLED_AFTER", 1)
    monkeypatch.setattr(share_server, "CLEANUP_INTERVAL", 1)
    big = tmp_path / "nas" / "IM0.dcm"
    big.parent.mkdir()
    with open(big, "wb") as fh:
        fh.truncate(256 << 20)  # sparse: far more than the socket buffers and waitress's hold
    st = big.stat()
    app = NasApp(parse_settings({"Connection": {"Type": "local", "Path": str(big.parent)},
                                 "DataDirectory": str(tmp_path / "d"), "ShareServer": {"Port": 0}}))
    writer = CatalogWriter(app.catalog)
    writer.begin_run()
    writer.write([(FileEntry("IM0.dcm", st.st_size, st.st_mtime_ns), {"SeriesInstanceUID": "1.2"}, None)])
    writer.close()
    assert app.start_share_listener()
    client = socket.socket()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(("127.0.0.1", app.listener.port))
        _, token = share(app)
        client.sendall(f"GET /share/{token} HTTP/1.1\r\nHost: nas\r\n\r\n".encode())  # then reads nothing
        deadline = time.monotonic() + 20
        while [outcome for _, outcome in audit_clients(app)] in ([], ["started"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert [outcome for _, outcome in audit_clients(app)] == ["disconnected"]
    finally:
        client.close()
        app.close()


def test_redact():
    assert redact("Exception while serving /share/abc-DEF_123") == "Exception while serving /share/<token>"
    assert redact("GET /share/abc?x=1 HTTP/1.1") == "GET /share/<token>?x=1 HTTP/1.1"


def test_waitress_records_reach_the_log_without_tokens(caplog):
    route_waitress_logs()
    handler = RedactingHandler()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("waitress", logging.ERROR, __file__, 1, "Exception while serving /share/SECRET",
                                   None, __import__("sys").exc_info())
    with caplog.at_level(logging.INFO, logger="orthanc_nas"):
        handler.emit(record)
        changed = logging.LogRecord("waitress", logging.ERROR, __file__, 1, "Exception while serving /share/SECRET",
                                    None, (FileChanged, FileChanged("x changed"), None))
        handler.emit(changed)  # already audited and logged by the download itself
    assert "SECRET" not in caplog.text and "/share/<token>" in caplog.text and "ValueError: boom" in caplog.text
    assert caplog.text.count("share listener:") == 1
    assert logging.getLogger("waitress").propagate is False


def test_download_head_and_refusals(app, caplog):
    caplog.set_level(logging.INFO, logger="orthanc_nas")
    share_id, token = share(app)
    status, headers, body = request(app, "GET", f"/share/{token}")
    assert status == 200 and int(headers["Content-Length"]) == len(body)
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        assert len(archive.namelist()) == 4 and archive.testzip() is None
    status, headers, body = request(app, "HEAD", f"/share/{token}")
    assert status == 200 and body == b"" and headers["Cache-Control"] == "no-store"
    assert request(app, "GET", "/share/" + "x" * 43)[0] == 404
    status, headers, body = request(app, "HEAD", "/share/" + "y" * 43)
    assert status == 404 and body == b"" and int(headers["Content-Length"]) > 0
    assert request(app, "POST", f"/share/{token}/download")[0] == 404  # only the page takes a form
    assert request(app, "PUT", f"/share/{token}")[0] == 404
    assert request(app, "GET", "/")[0] == 404
    app.shares.revoke(share_id)
    assert request(app, "GET", f"/share/{token}")[0] == 410
    assert token not in caplog.text and share_id in caplog.text


def test_port_in_use_is_reported(app, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        second = ShareListener(app.listener.app, "127.0.0.1", port)
        with caplog.at_level(logging.ERROR, logger="orthanc_nas"):
            assert second.start() is False
    assert f"cannot listen on 127.0.0.1:{port}" in caplog.text and "rest of the NAS plugin works" in caplog.text
    second.stop()  # harmless when it never started


def test_stop_ends_a_download_in_progress_promptly(app):
    share_id, token = share(app)
    sock = socket.create_connection(("127.0.0.1", app.listener.port))
    sock.sendall(f"GET /share/{token} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    sock.recv(1024)  # under way; this client reads no further, so the server waits to send
    started = time.monotonic()
    app.listener.stop()
    assert time.monotonic() - started < 3
    assert not app.listener.running
    deadline = time.monotonic() + 5
    while app.shares.audit_log(share_id)[0]["outcome"] == "started":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert app.shares.audit_log(share_id)[0]["outcome"] == "stopped"
    sock.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", app.listener.port), timeout=1).close()
    assert not [t for t in threading.enumerate() if t.name.startswith("waitress-")]
