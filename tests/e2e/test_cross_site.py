"""Requests forged by another web site, in headless Chromium against a real Orthanc with authentication on.

The browser is logged in to Orthanc (HTTP Basic, as Orthanc Explorer asks). A page of another site
(on another loopback address, served by the test) submits HTML forms and a script's `fetch` at the /nas/
routes: the browser adds Orthanc's credentials, so only the plugin can tell them apart from the panel's
own requests. Nothing may change; the panel, opened with Orthanc Explorer's `?token=` in its address,
keeps working in the same browser.
"""

from __future__ import annotations

import html
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from playwright.sync_api import expect
from tests.support.dicom import write_series
from tests.support.orthanc import PASSWORD, USER, OrthancServer, free_port

from orthanc_nas.catalog import series_key

pytestmark = pytest.mark.e2e

HOSTILE_STUDY = '<img src=x onerror="window.pwned=1">'
HOSTILE_SERIES = "<script>window.pwned=2</script>"



@pytest.fixture
def attacker():
    """Another web site: a real HTTP server on another loopback address (another site for the browser, and
    a local one, which browsers let talk to Orthanc on loopback), serving `attacker.page`."""
    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            body = server.page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.2", 0), Page)
    server.page = ""
    server.url = f"http://127.0.0.2:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def orthanc(tmp_path):
    root = tmp_path / "nas"
    write_series(root / "ct", 3, PatientID="P1", SeriesInstanceUID="2.25.777")
    write_series(root / "hostile", 2, PatientID="P2", StudyDescription=HOSTILE_STUDY,
                 SeriesDescription=HOSTILE_SERIES)
    server = OrthancServer(tmp_path / "orthanc", nas={"Connection": {"Type": "local", "Path": str(root)},
                                                      "ShareServer": {"Port": free_port()}}, auth=True)
    server.start()
    assert server.index()["phase"] == "done"
    server.key = series_key({"SeriesInstanceUID": "2.25.777"}, "")
    yield server
    server.stop()


@pytest.fixture
def logged_in(browser, orthanc):
    """A browser whose user logged in to Orthanc: Chromium keeps the Basic credentials in its cache and
    sends them with every later top-level request to Orthanc, whichever site's page causes it."""
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield context, page
    context.close()


def attacker_page(orthanc: OrthancServer) -> str:
    """Forms of every kind a page may send without asking the target first, and a script's fetch."""
    share = json.dumps({"series": [orthanc.key], "label": "forged"})
    target = html.escape(orthanc.url)
    # text/plain: name=value with the JSON split around the "=" so that the body is valid JSON
    name, _, value = share[:-1].partition(", ")
    return f"""<!DOCTYPE html><html><body>
<form id="plain" method="POST" action="{target}/nas/shares" enctype="text/plain" >
  <input name='{html.escape(name)}, "x": "' value='"}}'></form>
<form id="multipart" method="POST" action="{target}/nas/shares" enctype="multipart/form-data" >
  <input name="json" value='{html.escape(share)}'></form>
<form id="urlencoded" method="POST" action="{target}/nas/index" >
  <input name='{{"full": true}}' value=""></form>
<script>
  window.fetchResult = fetch("{target}/nas/shares", {{method: "POST", mode: "no-cors", credentials: "include",
    body: (function () {{ var f = new FormData();
      f.append("json", new Blob([{json.dumps(share)}], {{type: "application/json"}})); return f; }})()
  }}).then(function () {{ return "sent"; }}, function (e) {{ return "failed " + e; }});
</script></body></html>"""


def test_a_cross_site_page_changes_nothing_while_the_panel_works(logged_in, orthanc, attacker):
    context, page = logged_in
    page.goto(f"{orthanc.url}/app/explorer.html")  # the user is logged in to Orthanc
    attacker.page = attacker_page(orthanc)
    seen: list[tuple[str, str | None]] = []
    page.on("response", lambda r: seen.append((r.url, r.status)) if "/nas/" in r.url else None)
    page.goto(attacker.url)
    assert page.evaluate("window.fetchResult") == "sent"
    for form in ("plain", "multipart", "urlencoded"):  # each submitted as a top-level navigation to Orthanc
        page.goto(attacker.url)
        with page.expect_navigation():
            page.evaluate(f"document.getElementById('{form}').submit()")
    posts = [status for url, status in seen if "/nas/" in url]
    assert {403, 415} & set(posts), seen  # the plugin refused (multipart: 1.10 answers 200 whatever it said)
    assert [s for s in orthanc.get("/nas/shares").json() if s["label"] == "forged"] == []
    status = orthanc.get("/nas/status").json()
    assert status["running"] is False and status["files_skipped"] == 0  # no run started (a run skips all 5)

    # the panel, opened the way Orthanc Explorer's links do (?token= in the address), still works
    page.goto(f"{orthanc.url}/nas/app/index.html?token=from-orthanc-explorer")
    page.get_by_role("link", name="Indexing").click()
    page.locator("#index-start").click()
    deadline = time.monotonic() + 60
    status = orthanc.get("/nas/status").json()
    while status["running"] or status["files_skipped"] != 5:  # a second run skips the 5 files read by the first
        assert time.monotonic() < deadline, f"the panel's Index now gave no finished run: {status}"
        time.sleep(0.1)
        status = orthanc.get("/nas/status").json()
    assert status["phase"] == "done"
    made = page.evaluate("""key => fetch('../shares', {method: 'POST', credentials: 'same-origin',
        headers: {'Content-Type': 'application/json', 'token': 'from-orthanc-explorer'},
        body: JSON.stringify({series: [key], label: 'from the panel'})}).then(r => r.status)""", orthanc.key)
    assert made == 201
    assert [s["label"] for s in orthanc.get("/nas/shares").json()] == ["from the panel"]


def test_no_script_from_the_nas_runs_in_the_panel(logged_in, orthanc):
    """Tag values are shown as text: descriptions holding HTML neither run nor change the page."""
    _, page = logged_in
    page.goto(f"{orthanc.url}/nas/app/index.html")
    page.locator("#q").fill("P2")
    page.locator("#search-button").click()
    expect(page.locator("#results")).to_contain_text(HOSTILE_STUDY)
    expect(page.locator("#results")).to_contain_text(HOSTILE_SERIES)
    assert page.evaluate("window.pwned") is None
    assert page.locator("#results img, #results script").count() == 0
