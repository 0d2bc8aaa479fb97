"""nas_glue.send against stand-ins with the call forms measured on each Python plugin.

Plugin 4.0 (Orthanc 1.10, Debian 12): `SendHttpStatus(status, str, length)`, no streaming.
Plugin 5.0 (Orthanc 1.12, Debian 13): `SendHttpStatus(status, body)`, `StartStreamAnswer`/`SendStreamChunk`.
Plugin 7.1 (Orthanc 1.13, Debian unstable): as 5.0. All three have `SetRootUri` and `SetDescription`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tests.support.orthanc import free_port

import nas_glue
from orthanc_nas.http import Response, json_response


class Output40:
    def __init__(self):
        self.calls = []

    def SetHttpHeader(self, name, value):
        self.calls.append(("header", name, value))

    def AnswerBuffer(self, body, mime):
        self.calls.append(("buffer", bytes(body), mime))

    def SendHttpStatusCode(self, status):
        self.calls.append(("code", status))

    def Redirect(self, location):
        self.calls.append(("redirect", location))

    def SendMethodNotAllowed(self, allowed):
        self.calls.append(("not allowed", allowed))

    def SendHttpStatus(self, *args):
        if len(args) != 3 or not isinstance(args[1], str):
            raise TypeError("Bad types for the arguments (3 arguments expected)")
        self.calls.append(("status", args[0], args[1].encode(), args[2]))


class Output50(Output40):
    def SendHttpStatus(self, *args):
        if len(args) != 2:
            raise TypeError("Bad types for the arguments (2 arguments expected)")
        body = args[1].encode() if isinstance(args[1], str) else bytes(args[1])
        self.calls.append(("status", args[0], body, len(body)))

    def StartStreamAnswer(self, mime):
        self.calls.append(("stream", mime))

    def SendStreamChunk(self, chunk):
        self.calls.append(("chunk", bytes(chunk)))


@pytest.mark.parametrize("output", [Output40(), Output50()], ids=["plugin-4.0", "plugin-5.0"])
def test_an_error_answer_keeps_its_status_body_and_type(output):
    nas_glue.send(output, json_response({"error": "gone", "kind": "not_found", "hint": "é"}, 404))
    assert ("header", "Content-Type", "application/json; charset=utf-8") in output.calls
    status = [c for c in output.calls if c[0] == "status"]
    body = '{"error": "gone", "kind": "not_found", "hint": "é"}'.encode()
    assert status == [("status", 404, body, len(body))]


def test_a_stream_is_streamed_where_the_plugin_can():
    output = Output50()
    closed = []

    def body():
        try:
            yield b"ab"
            yield b""
            yield b"cd"
        finally:
            closed.append(True)

    nas_glue.send(output, Response(200, body(), "application/zip", {"Content-Disposition": "attachment"}))
    assert output.calls == [("header", "Content-Disposition", "attachment"), ("stream", "application/zip"),
                            ("chunk", b"ab"), ("chunk", b"cd")]
    assert closed


def test_a_stream_is_one_buffer_where_the_plugin_cannot():
    output = Output40()
    nas_glue.send(output, Response(200, iter([b"ab", b"cd"]), "application/zip"))
    assert output.calls == [("buffer", b"abcd", "application/zip")]


def test_a_stream_failing_midway_ends_short_and_is_closed():
    output = Output50()

    def body():
        yield b"ab"
        raise OSError("NAS gone")

    nas_glue.send(output, Response(200, body(), "application/zip"))  # logged, not raised
    assert output.calls[-1] == ("chunk", b"ab")


@pytest.mark.parametrize("output", [Output40(), Output50()], ids=["plugin-4.0", "plugin-5.0"])
def test_redirections_and_405_go_through_their_own_calls(output):
    """Orthanc refuses 301 and 405 through SendHttpStatus ("use the dedicated methods")."""
    nas_glue.send(output, Response(301, b"", headers={"Location": "index.html"}))
    nas_glue.send(output, json_response({"error": "no"}, 405, {"Allow": "GET, PUT"}))
    assert ("redirect", "index.html") in output.calls and ("not allowed", "GET, PUT") in output.calls
    assert not [c for c in output.calls if c[0] == "status"]


class Module40:
    """What nas_glue.link_panel uses of the `orthanc` module (present in plugins 4.0, 5.0 and 7.1)."""

    def __init__(self):
        self.calls = []

    def SetRootUri(self, uri):
        self.calls.append(("root", uri))

    def SetDescription(self, text):
        self.calls.append(("description", text))


def test_the_panel_is_named_as_the_plugins_root_page_relative_to_orthanc_explorer():
    orthanc = Module40()
    assert nas_glue.link_panel(orthanc)
    assert orthanc.calls[0] == ("root", "../nas/app/index.html")
    assert orthanc.calls[1][0] == "description" and "NAS panel" in orthanc.calls[1][1]


def test_a_module_without_root_pages_gets_no_link_and_no_error():
    assert not nas_glue.link_panel(object())


def test_requests_compile_no_module_in_orthancs_threads(tmp_path):
    """Orthanc's HTTP threads have a 100 KB C stack, in which Python 3.14 cannot compile pynetdicom's
    sources (the echo route answered 500 on Orthanc 1.13): every module a request needs, outside the
    standard library (whose bytecode Debian ships), is imported while the plugin loads. A fresh
    interpreter, so that no other test has imported them before."""
    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "nas").mkdir()
    done = subprocess.run([sys.executable, str(repo / "tests" / "support" / "glue_standin.py"), str(tmp_path / "data"),
                           str(tmp_path / "nas"), str(free_port())], capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": f"{repo / 'plugin'}:{repo}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["answers"]["POST /nas/destinations/ws/echo"] == 502  # pynetdicom ran: nobody listens there
    assert found["answers"]["GET /nas/destinations"] == 200
    assert found["imported"] == [], f"imported while serving, not while loading: {found['imported']}"
    assert "pynetdicom" in nas_glue.PRELOADED
