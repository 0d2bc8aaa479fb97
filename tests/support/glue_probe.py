"""A site script for Orthanc's "PythonScript" that loads the plugin the documented way (runpy) and adds
routes that answer through `nas_glue.send` with what no product route sends yet, for the tests of what
differs between Python plugins (streamed answers)."""

import runpy
import sys
from pathlib import Path

import orthanc

runpy.run_path(str(Path(__file__).resolve().parents[2] / "plugin" / "nas_plugin.py"))

import nas_glue  # noqa: E402  (importable once the plugin script has run)
from orthanc_nas.http import Response, json_response  # noqa: E402


def chunks(fail: bool):
    for i in range(3):
        if fail and i == 1:
            raise OSError("the NAS went away")
        yield f"chunk{i};".encode() * 1000


def probe(output, uri, **request):
    name = request["groups"][0]
    if name == "features":
        answer = json_response({"can_stream": nas_glue.can_stream(output),
                                "python": "{}.{}".format(*sys.version_info[:2])})
    elif name == "stream":
        answer = Response(200, chunks(False), "application/octet-stream", {"X-Probe": "yes"})
    elif name == "stream-fails":
        answer = Response(200, chunks(True), "application/octet-stream")
    else:
        answer = json_response({"error": "no such probe"}, 404)
    nas_glue.send(output, answer)


orthanc.RegisterRestCallback("/glue-probe/(.*)", probe)
