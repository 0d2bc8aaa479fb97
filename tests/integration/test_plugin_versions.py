"""What differs between the Python plugins, through a real Orthanc of ORTHANC_TARGET.

The plugin detects these by feature, never by version; these tests say what each target is
expected to offer and check that the glue answers right on it.
"""

from __future__ import annotations

import pytest
from tests.support.orthanc import REPO, TARGET

pytestmark = pytest.mark.integration

PROBE = REPO / "tests" / "support" / "glue_probe.py"
EXPECTED = {  # measured: plugin 4.0 (Debian 12) cannot stream, 5.0 (Debian 13) and 7.1 (Debian unstable) can
    "1.10": {"can_stream": False, "python": "3.11"},
    "1.12": {"can_stream": True, "python": "3.13"},
    "1.13": {"can_stream": True, "python": "3.14"},
}
BODY = b"".join(f"chunk{i};".encode() * 1000 for i in range(3))


@pytest.fixture
def probed(orthanc_factory, tmp_path):
    """Orthanc with the plugin loaded from a site script, the way the README tells (runpy)."""
    nas = tmp_path / "nas"
    nas.mkdir()
    return orthanc_factory({"Connection": {"Type": "local", "Path": str(nas)}},
                           extra={"PythonScript": str(PROBE)})


def test_the_plugin_loads_from_a_site_script_and_sees_its_python(probed):
    assert probed.get("/nas/status").json()["phase"] == "idle"
    assert probed.get("/glue-probe/features").json() == EXPECTED[TARGET]


def test_a_streamed_answer_is_streamed_where_the_plugin_can_and_joined_elsewhere(probed):
    r = probed.get("/glue-probe/stream", headers={"Accept-Encoding": "identity"})  # lengths as sent
    assert r.status_code == 200 and r.content == BODY
    assert r.headers["Content-Type"] == "application/octet-stream" and r.headers["X-Probe"] == "yes"
    if EXPECTED[TARGET]["can_stream"]:
        assert "Content-Length" not in r.headers  # sent in chunks
    else:
        assert r.headers["Content-Length"] == str(len(BODY))  # one buffer


def test_a_stream_that_fails_midway_ends_short_and_says_why_in_the_log(probed):
    r = probed.get("/glue-probe/stream-fails")
    if EXPECTED[TARGET]["can_stream"]:
        # The status went out with the first chunk: the answer can only end short.
        assert r.status_code == 200 and r.content == BODY[:len(BODY) // 3]
        assert "streaming an answer failed after 7000 bytes" in probed.log()
    else:
        assert r.status_code == 500


def test_error_answers_have_a_json_body_on_every_plugin(probed):
    r = probed.get("/nas/no-such-route")
    assert r.status_code == 404 and set(r.json()) == {"error", "kind", "hint"}
