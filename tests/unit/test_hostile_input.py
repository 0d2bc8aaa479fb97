"""The defences against hostile requests and a hostile NAS, on the core alone (the same through a real
Orthanc: tests/integration/test_hostile_requests.py, tests/e2e/test_cross_site.py)."""

from __future__ import annotations

import os
import threading

import pytest
import waitress.channel
import waitress.server
from tests.support.dicom import write_deeply_nested

from orthanc_nas import client_limits
from orthanc_nas.allowed import is_beneath
from orthanc_nas.errors import BadRequest, CrossSiteRequest, NasError, NasNotFound, UnsupportedMediaType
from orthanc_nas.file_meta import NotDicom
from orthanc_nas.headers import parse_head
from orthanc_nas.http import MAX_JSON_BYTES, MAX_JSON_DEPTH, Request, check_json_shape, check_same_origin
from orthanc_nas.sources.local import LocalSource, open_beneath


def post(body: bytes = b"{}", **headers) -> Request:
    base = {"host": "orthanc.local:8042", "content-type": "application/json"}
    base.update({k.replace("_", "-"): v for k, v in headers.items()})
    return Request("POST", "/nas/shares", headers={k: v for k, v in base.items() if v is not None}, body=body)


# -- JSON bodies ---------------------------------------------------------------------------------------------
def test_nesting_is_bounded_before_parsing():
    check_json_shape(b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH)
    for body in (b"[" * (MAX_JSON_DEPTH + 1), b'{"a": ' * (MAX_JSON_DEPTH + 1), b"[" * 1_000_000):
        with pytest.raises(BadRequest, match="nested deeper"):
            check_json_shape(body)
    with pytest.raises(BadRequest, match="larger than"):
        check_json_shape(b" " * (MAX_JSON_BYTES + 1))


def test_brackets_inside_strings_do_not_count():
    text = b'{"label": "' + b"[{" * 10_000 + b'\\"[[["}'
    check_json_shape(text)
    assert post(text).json()["label"].startswith("[{[{")


@pytest.mark.parametrize("headers", [{"content_type": None}, {"content_type": "text/plain"},
                                     {"content_type": "application/vnd.api+json"},
                                     {"content_disposition": 'form-data; name="json"'}])
def test_only_application_json_is_a_body_even_an_empty_one(headers):
    for body in (b'{"series": []}', b""):
        with pytest.raises(UnsupportedMediaType):
            post(body, **headers).json(required=False)
    assert post(b"", content_type="application/json; charset=utf-8").json(required=False) == {}


def test_a_body_without_a_type_is_told_so():
    with pytest.raises(UnsupportedMediaType, match="the request has no Content-Type"):
        post(b"{}", content_type=None).json()


def test_a_lone_surrogate_names_its_field():
    with pytest.raises(BadRequest, match="'Connection.Path' holds a lone UTF-16 surrogate"):
        post(b'{"Connection": {"Path": "/mnt/\\udc80"}}').json()
    assert post(b'{"label": "\\ud83d\\ude00"}').json() == {"label": "\U0001F600"}  # a pair is text


# -- requests of other sites ------------------------------------------------------------------------------------
@pytest.mark.parametrize("headers", [
    {"sec_fetch_site": "cross-site"},
    {"sec_fetch_site": "cross-site", "origin": "http://orthanc.local:8042"},
    {"sec_fetch_site": "same-site", "origin": "http://other.local"},
    {"sec_fetch_site": "same-site"},
    {"origin": "http://evil.example"},
    {"origin": "http://orthanc.local:8043"},
    {"origin": "null"},
    {"origin": "http://evil.example", "x_forwarded_host": "pacs.example.org"},
])
def test_requests_a_browser_marks_as_cross_site_are_refused(headers):
    with pytest.raises(CrossSiteRequest) as info:
        check_same_origin(post(**headers))
    assert info.value.status == 403


@pytest.mark.parametrize("headers", [
    {},  # a program
    {"sec_fetch_site": "same-origin"},
    {"sec_fetch_site": "same-origin", "origin": "https://pacs.example.org"},
    {"sec_fetch_site": "none"},
    {"origin": "http://orthanc.local:8042"},
    {"origin": "HTTP://Orthanc.Local:8042"},
    {"origin": "https://pacs.example.org", "x_forwarded_host": "pacs.example.org"},
    {"origin": "https://pacs.example.org", "x_forwarded_host": "pacs.example.org:443, internal:8042"},
    {"origin": "http://orthanc.local", "host": "orthanc.local:80"},
])
def test_requests_of_orthancs_own_pages_and_programs_pass(headers):
    check_same_origin(post(**headers))


# -- folders and links --------------------------------------------------------------------------------------------
def test_is_beneath_resolves_dots_and_links(tmp_path):
    (tmp_path / "mnt" / "nas").mkdir(parents=True)
    os.symlink("/", tmp_path / "mnt" / "escape")
    os.symlink(tmp_path / "mnt" / "nas", tmp_path / "elsewhere")
    mnt = str(tmp_path / "mnt")
    assert is_beneath(f"{mnt}/nas", mnt) and is_beneath(mnt, mnt) and is_beneath(f"{mnt}/new", mnt)
    assert is_beneath(str(tmp_path / "elsewhere"), mnt)  # a link into the root is where it leads
    for path in (f"{mnt}/escape", f"{mnt}/escape/etc", f"{mnt}/../", f"{mnt}x", "mnt/nas", "/"):
        assert not is_beneath(path, mnt), path
    assert is_beneath("\\\\NAS\\dicom\\ct", "\\\\nas\\DICOM") and not is_beneath("\\\\nas\\dicomx", "\\\\nas\\dicom")


def test_a_relative_path_is_taken_from_the_working_directory_as_the_source_opens_it(tmp_path, monkeypatch):
    """orthanc.json's own relative Path (`make run`: "var/sample-nas") is allowed from the web, as it reads."""
    (tmp_path / "var" / "sample-nas" / "ct").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert is_beneath("var/sample-nas", "var/sample-nas") and is_beneath("var/sample-nas/ct", "var/sample-nas")
    assert is_beneath(str(tmp_path / "var" / "sample-nas"), "var/sample-nas")
    assert not is_beneath("var/sample-nas/../..", "var/sample-nas") and not is_beneath("/", "var/sample-nas")


def test_files_open_only_beneath_the_root_without_links(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a").mkdir(parents=True)
    outside.mkdir()
    (root / "a" / "f.dcm").write_bytes(b"inside")
    (outside / "f.dcm").write_bytes(b"outside")
    os.symlink(outside, root / "link-folder")
    os.symlink(outside / "f.dcm", root / "a" / "link-file.dcm")
    os.symlink(root / "a" / "f.dcm", root / "a" / "link-inside.dcm")
    os.mkfifo(root / "a" / "pipe.dcm")  # would block an open() for reading forever
    os.close(open_beneath(str(root), "a/f.dcm"))
    source = LocalSource(str(root))
    assert source.read_head("a/f.dcm", 100) == b"inside"
    for path in ("link-folder/f.dcm", "a/link-file.dcm", "a/link-inside.dcm", "../outside/f.dcm"):
        with pytest.raises(NasNotFound):
            source.read_head(path, 100)
        with pytest.raises(NasNotFound):
            source.open(path)
    with pytest.raises(NasError, match="not a regular file"):
        source.read_head("a/pipe.dcm", 100)


def test_a_deeply_nested_header_is_refused_with_a_reason_even_on_a_small_stack(tmp_path):
    """Parse worker processes have the main thread's stack; without them (one core) an indexing thread
    parses: Python's recursion limit must end the parse before the native stack is used up."""
    buf = write_deeply_nested(tmp_path / "deep.dcm", 20_000).read_bytes()
    outcome = []

    def parse():
        try:
            outcome.append(parse_head(buf, True))
        except NotDicom as exc:
            outcome.append(exc)

    old = threading.stack_size(256 * 1024)
    try:
        thread = threading.Thread(target=parse)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(old)
    assert isinstance(outcome[0], NotDicom) and "RecursionError" in str(outcome[0])


# -- the share listener's limits ------------------------------------------------------------------------------------
def test_download_slots_per_client():
    slots = client_limits.DownloadSlots(2)
    assert slots.acquire("a") and slots.acquire("a") and not slots.acquire("a")
    assert slots.acquire("b")
    slots.release("a")
    assert slots.acquire("a") and not slots.acquire("a")


def test_the_waitress_internals_the_limits_use_are_there():
    """client_limits.guard wraps these: a waitress that renames them must fail here, loudly."""
    assert waitress.server.BaseWSGIServer.channel_class is waitress.channel.HTTPChannel
    for name in ("maintenance", "handle_accept"):
        assert callable(getattr(waitress.server.BaseWSGIServer, name))
    server = waitress.server.create_server(lambda e, s: [], host="127.0.0.1", port=0, _start=False)
    try:
        assert isinstance(server.active_channels, dict) and isinstance(server._map, dict)
        client_limits.guard(server)
        assert server.channel_class is not waitress.channel.HTTPChannel
        server.maintenance(0.0)
    finally:
        server.close()
        server.task_dispatcher.shutdown()  # its threads, started by create_server
    assert waitress.channel.HTTPChannel.request is None  # an incomplete request is kept here
    source = waitress.channel.HTTPChannel.__init__.__code__.co_names
    assert "addr" in source and "creation_time" in source


def test_a_saved_connection_outside_the_allowed_roots_is_ignored_at_start(tmp_path, caplog):
    """nas-config.json saved before AllowedRoots was narrowed (or by an older version) leads nowhere."""
    import json

    from orthanc_nas.app import NasApp
    from orthanc_nas.config import parse_settings

    nas = tmp_path / "nas"
    nas.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "nas-config.json").write_text(json.dumps({"Connection": {"Type": "local", "Path": "/etc"}}))
    settings = parse_settings({"Connection": {"Type": "local", "Path": str(nas)}, "DataDirectory": str(data),
                               "AllowedRoots": [str(tmp_path / "mnt")]})
    app = NasApp(settings, parse_processes=0)
    try:
        assert app.settings.Connection.Path == str(nas)
        assert "nas-config.json.Connection.Path '/etc' is outside the folders" in caplog.text
    finally:
        app.close()
