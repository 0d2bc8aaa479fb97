"""The NAS panel's files served under /nas/app/: types, headers, nothing outside the panel's folder."""

from __future__ import annotations

import re

import pytest

from orthanc_nas.api import router
from orthanc_nas.errors import NotFound
from orthanc_nas.http import Request
from orthanc_nas.panel import PANEL_DIR, panel_file


@pytest.mark.parametrize("name, mime", [
    ("index.html", "text/html; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("app.css", "text/css; charset=utf-8"),
])
def test_panel_files_have_their_type_and_a_strict_policy(name, mime):
    answer = panel_file(name)
    assert answer.status == 200 and answer.content_type == mime and answer.body
    policy = answer.headers["Content-Security-Policy"]
    assert "default-src 'self'" in policy and "unsafe" not in policy
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("name", ["", "..", "../README.md", "..%2fREADME.md", "a/b.js", ".hidden.js", "README.md",
                                  "index.html/", "missing.js", "app.js\x00.css", "C:\\x.js", "%2e%2e"])
def test_anything_else_is_not_found(name):
    with pytest.raises(NotFound):
        panel_file(name)


def test_the_panel_loads_nothing_from_outside_and_calls_only_nas_routes():
    with open(f"{PANEL_DIR}/index.html", encoding="utf-8") as fh:
        page = fh.read()
    assert not re.search(r"""(src|href)=["'](https?:)?//""", page)
    assert not re.search(r"<script>|<style>| style=", page)  # the policy allows no inline code or style
    routes = set()
    for name in ("app.js", "retrieve.js"):
        with open(f"{PANEL_DIR}/{name}", encoding="utf-8") as fh:
            script = fh.read()
        assert not re.search(r"https?://|fetch\((?!'\.\./' \+ path)", script)  # one fetch, relative to /nas/
        routes |= set(re.findall(r"api\('(?:GET|POST|PUT|DELETE)', '([a-z/]+)", script))
    assert routes == {"config", "config/test", "status", "index", "runs", "search", "series/", "shares", "shares/",
                      "patients/", "retrieve", "jobs", "jobs/", "destinations", "destinations/"}


def test_app_without_a_file_name_is_sent_on_to_index_html():
    for path, location in (("/nas/app", "index.html"), ("/nas/index.html", "app/index.html")):
        answer = router.dispatch(None, Request("GET", path))
        assert answer.status == 301 and answer.headers["Location"] == location
