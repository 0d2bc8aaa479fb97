"""GET/PUT /nas/config and POST /nas/config/test through a real Orthanc, and the panel's files.

Local folders here; the SMB cases (wrong password, missing share, a NAS that does not
answer, the saved password) are in test_config_routes_smb.py.
"""

from __future__ import annotations

import json
import os
import stat
from urllib.parse import urljoin, urlsplit

import pytest
import requests
from tests.support.dicom import write_series
from tests.support.orthanc import OrthancServer
from tests.support.web_settings import BODY_RULES, CONNECTION_RULES

pytestmark = pytest.mark.integration


def local(path) -> dict:
    return {"Type": "local", "Path": str(path)}


@pytest.fixture(scope="module")
def nas_a(tmp_path_factory):
    root = tmp_path_factory.mktemp("nas-a")
    write_series(root / "doe", 3, PatientName="DOE^JOHN", PatientID="A1")
    return root


@pytest.fixture(scope="module")
def nas_b(tmp_path_factory):
    """A second NAS: two series of another patient, and 150 names in its top folder."""
    root = tmp_path_factory.mktemp("nas-b")
    write_series(root / "muller" / "1", 2, PatientName="Müller^Jürgen", PatientID="B1", charset="ISO_IR 100")
    write_series(root / "muller" / "2", 2, PatientName="Müller^Jürgen", PatientID="B1", charset="ISO_IR 100")
    for i in range(149):
        (root / f"note{i:03d}.txt").write_text("not DICOM")
    return root


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, nas_a):
    """One Orthanc (authentication on) for the tests that leave the settings as they were."""
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-config"), nas={"Connection": local(nas_a)}, auth=True)
    server.start()
    yield server
    server.stop()


def error_of(answer: requests.Response, status: int) -> dict:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) >= {"error", "kind", "hint"} and body["hint"]
    return body


# -- GET ----------------------------------------------------------------------------------------------------
def test_get_answers_the_section_without_a_password(orthanc, nas_a):
    settings = orthanc.get("/nas/config").json()
    assert set(settings) == {"Connection", "DataDirectory", "Workers", "Enumerator", "DefaultShareHours",
                             "MaxShareHours", "ShareServer", "AllowedRoots", "AllowedHosts", "Schedule", "Throttle",
                             "ExcludedFolders", "SkippedExtensions", "DicomServer", "ImportRetentionHours", "Database"}
    assert settings["Database"] == {"Type": "sqlite", "Url": "", "PasswordSet": False}
    assert settings["Connection"]["Path"] == str(nas_a) and settings["Connection"]["PasswordSet"] is False
    assert "Password" not in settings["Connection"]


def test_the_routes_and_the_panel_need_orthanc_credentials(orthanc):
    anonymous = requests.Session()
    for method, path in [("GET", "/nas/config"), ("PUT", "/nas/config"), ("POST", "/nas/config/test"),
                         ("GET", "/nas/app/index.html")]:
        assert anonymous.request(method, orthanc.url + path, json={}, timeout=10).status_code == 401, path


# -- validation: every rule names its field -------------------------------------------------------------
@pytest.mark.parametrize("connection, field", CONNECTION_RULES)
def test_every_connection_rule_names_its_field(orthanc, nas_a, connection, field):
    for method, path in (("PUT", "/nas/config"), ("POST", "/nas/config/test")):
        body = error_of(orthanc.session.request(method, orthanc.url + path, json={"Connection": connection},
                                                timeout=30), 400)
        assert body["kind"] == "config" and body["field"] == field and field in body["error"], (method, body)
    assert orthanc.get("/nas/config").json()["Connection"]["Path"] == str(nas_a)  # nothing saved


@pytest.mark.parametrize("body, field, words", BODY_RULES)
def test_every_body_rule_names_its_field(orthanc, body, field, words):
    answer = error_of(orthanc.put("/nas/config", json=body), 400)
    assert answer["field"] == field and words in answer["error"]


def test_the_test_route_takes_only_a_connection(orthanc, nas_a):
    answer = error_of(orthanc.post("/nas/config/test", json={"Connection": local(nas_a), "Workers": 3}), 400)
    assert answer["field"] == "Workers" and "unknown setting" in answer["error"]


@pytest.mark.parametrize("method, path", [("PUT", "/nas/config"), ("POST", "/nas/config/test")])
def test_bodies_must_be_json_objects(orthanc, method, path):
    def send(data, ctype):
        return orthanc.session.request(method, orthanc.url + path, data=data, headers={"Content-Type": ctype},
                                       timeout=30)
    assert error_of(send("Connection=x", "application/x-www-form-urlencoded"), 415)["kind"] == "bad_request"
    assert error_of(send('{"Connection": {"Type": "local", "Path": "/x"}}', "text/plain"), 415)
    assert "JSON" in error_of(send("{not json", "application/json"), 400)["error"]
    assert "object" in error_of(send("[1]", "application/json"), 400)["error"]
    if method == "PUT":
        assert "JSON body" in error_of(send("", "application/json"), 400)["error"]


# -- the connection test -------------------------------------------------------------------------------------
def test_a_folder_that_is_there_lists_its_first_100_names(orthanc, nas_b):
    answer = orthanc.post("/nas/config/test", json={"Connection": local(nas_b)})
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["ok"] is True and isinstance(result["elapsed_ms"], int)
    assert len(result["entries"]) == 100 and result["entries"] == sorted(result["entries"])
    assert "muller/" in result["entries"]


def test_no_body_tests_the_connection_in_use(orthanc):
    result = orthanc.post("/nas/config/test", json={}).json()
    assert result["ok"] is True and result["entries"] == ["doe/"]


@pytest.mark.parametrize("where", ["missing", "a-file"])
def test_a_missing_folder_is_not_found_with_a_hint(orthanc, tmp_path, where):
    (tmp_path / "a-file").write_text("x")
    answer = orthanc.post("/nas/config/test", json={"Connection": local(tmp_path / where)})
    body = error_of(answer, 502)
    assert body["ok"] is False and body["kind"] == "not_found" and str(tmp_path / where) in body["error"]
    assert "elapsed_ms" in body


# -- saving ----------------------------------------------------------------------------------------------
def test_put_saves_reconnects_and_survives_a_restart(orthanc_factory, nas_a, nas_b, tmp_path):
    workdir = tmp_path / "orthanc"
    o = orthanc_factory({"Connection": local(nas_a), "Workers": 12}, workdir=workdir)
    assert o.index()["series_count"] == 1

    answer = o.put("/nas/config", json={"Connection": local(nas_b), "Workers": 3})
    assert answer.status_code == 200, answer.text
    saved = answer.json()
    assert saved["Connection"]["Path"] == str(nas_b) and saved["Workers"] == 3
    assert saved["test"]["ok"] is True and "muller/" in saved["test"]["entries"]
    assert {k: v for k, v in saved.items() if k != "test"} == o.get("/nas/config").json()

    config_file = workdir / "storage" / "nas" / "nas-config.json"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert json.loads(config_file.read_text()) == {"Connection": {**local(nas_b), "Host": "", "Share": "",
                                                                  "Username": "", "Password": "", "Domain": "",
                                                                  "Port": 445}, "Workers": 3}
    assert not [p for p in config_file.parent.iterdir() if ".tmp" in p.name]

    # the connector uses the new folder at once: its series come in, those of the old one go
    status = o.index()
    assert status["phase"] == "done" and status["series_count"] == 2 and status["workers"] <= 3
    assert {s["PatientID"] for s in o.get("/nas/search").json()} == {"B1"}

    o.stop()
    o.start()
    after = o.get("/nas/config").json()
    assert after["Connection"]["Path"] == str(nas_b) and after["Workers"] == 3
    assert "NAS connection saved from the web: folder " + str(nas_b) in o.log()


def test_put_saves_even_when_the_test_fails_and_says_so(orthanc_factory, nas_a, tmp_path):
    o = orthanc_factory({"Connection": local(nas_a)})
    gone = tmp_path / "unmounted"
    answer = o.put("/nas/config", json={"Connection": local(gone)})
    assert answer.status_code == 200, answer.text
    test = answer.json()["test"]
    assert test["ok"] is False and test["kind"] == "not_found" and "mount" in test["hint"]
    assert o.get("/nas/config").json()["Connection"]["Path"] == str(gone)
    assert o.index()["phase"] == "failed"  # indexing now looks there, and says why it cannot


def test_workers_stay_out_of_the_file_when_not_changed(orthanc_factory, nas_a, nas_b, tmp_path):
    o = orthanc_factory({"Connection": local(nas_a), "Workers": 7}, workdir=tmp_path / "o")
    assert o.put("/nas/config", json={"Connection": local(nas_b)}).json()["Workers"] == 7
    assert "Workers" not in json.loads((tmp_path / "o" / "storage" / "nas" / "nas-config.json").read_text())


@pytest.fixture(scope="module")
def big_nas(tmp_path_factory):
    root = tmp_path_factory.mktemp("big-nas")
    for s in range(20):
        write_series(root / f"series {s}", 100, PatientID=f"P{s % 5}", pixel_bytes=16)
    return root


def test_the_connection_cannot_change_while_indexing_runs(orthanc_factory, big_nas, nas_b):
    o = orthanc_factory({"Connection": local(big_nas)})
    assert o.post("/nas/index", json={"full": True}).status_code == 202
    body = error_of(o.put("/nas/config", json={"Connection": local(nas_b)}), 409)
    assert body["kind"] == "busy" and "while indexing runs" in body["error"] and "Stop" in body["hint"]
    assert o.get("/nas/config").json()["Connection"]["Path"] == str(big_nas)
    assert not (o.workdir / "storage" / "nas" / "nas-config.json").exists()
    o.delete("/nas/index")
    o.wait_index(60, phases=("cancelled", "done"))
    assert o.put("/nas/config", json={"Connection": local(nas_b)}).status_code == 200


# -- the panel's files ----------------------------------------------------------------------------------
def test_the_panel_is_served_under_nas_app(orthanc):
    for path in ("/nas/app/index.html", "/nas/app/", "/nas/app"):
        answer = orthanc.get(path)
        assert answer.status_code == 200 and answer.url.endswith("/nas/app/index.html"), path
        assert answer.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "default-src 'self'" in answer.headers["Content-Security-Policy"]
        assert '<script src="app.js"' in answer.text
    assert orthanc.get("/nas/app/app.js").headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert orthanc.get("/nas/app/app.css").headers["Content-Type"] == "text/css; charset=utf-8"
    for path in ("/nas/app/nothing.js", "/nas/app/README.md", "/nas/app/..%2F..%2Fplugin%2Fnas_glue.py"):
        assert orthanc.get(path).status_code == 404, path


def test_the_panel_takes_one_redirection_behind_a_proxy_that_names_its_prefix(orthanc):
    for path in ("/nas/app", "/nas/app/"):
        answer = orthanc.get(path, headers={"X-Forwarded-Prefix": "/pacs"}, allow_redirects=False)
        assert answer.status_code in (301, 307) and answer.headers["Location"] == "/pacs/nas/app/index.html"
    # without it, relative: `/nas/app` and `/nas/app/` reach the plugin alike (Orthanc drops the slash)
    answer = orthanc.get("/nas/app?q=DOE", allow_redirects=False)
    assert answer.headers["Location"] == "index.html?q=DOE"
    assert orthanc.get("/nas/app/index.html?q=DOE&token=t").status_code == 200


def test_orthanc_answers_head_and_405_itself(orthanc):
    """What a plugin cannot change: Orthanc (1.10 to 1.13) hands HEAD only to WebDAV, which the Python
    plugin cannot register (a 404 for every other address, its own too), and sends a 405 only through
    its own call, without body (SendHttpStatus refuses the status). The router answers both in full for
    callers in the same process (tests/unit/test_router.py)."""
    for path in ("/nas/app/index.html", "/system"):
        assert orthanc.session.head(orthanc.url + path, timeout=10).status_code == 404, path
    answer = orthanc.delete("/nas/status")
    assert (answer.status_code, answer.headers["Allow"], answer.content) == (405, "GET", b"")


def test_orthanc_explorer_gets_the_nas_button(orthanc):
    script = orthanc.get("/plugins/explorer.js").text
    assert "nas-open-panel" in script and "../nas/app/index.html" in script


def test_the_plugin_lists_of_orthanc_explorer_and_orthanc_explorer_2_link_the_panel(orthanc):
    plugin = orthanc.get("/plugins/python").json()
    assert "orthanc-nas" in plugin["Description"]
    # Orthanc Explorer opens RootUri from /app/explorer.html; Orthanc Explorer 2 (Root /ui/, pages under
    # /ui/app/) puts one "../" per folder of its Root before it (its Plugin.cpp, GetPluginsConfiguration).
    for page, prefix in (("/app/explorer.html", ""), ("/ui/app/settings", "../")):
        link = urljoin(orthanc.url + page, prefix + plugin["RootUri"])
        assert urlsplit(link).path == "/nas/app/index.html", page
        answer = orthanc.session.get(link, timeout=30)
        assert answer.status_code == 200 and '<script src="app.js"' in answer.text


def test_no_route_answers_or_logs_a_password(orthanc):
    secret = "never-shown-" + os.urandom(4).hex()
    for method, path in (("PUT", "/nas/config"), ("POST", "/nas/config/test")):
        answer = orthanc.session.request(method, orthanc.url + path, timeout=30, json={"Connection": {
            "Type": "smb", "Host": "h", "Share": "s/x", "Username": "u", "Password": secret}})
        assert answer.status_code == 400 and secret not in answer.text
    assert secret not in orthanc.log()
