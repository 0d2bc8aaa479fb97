"""The router of the /nas/ routes: query parameters, methods, HEAD and the panel's redirections."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from orthanc_nas.api import router
from orthanc_nas.http import PASSED_THROUGH, Request
from orthanc_nas.search import SEARCH_PARAMETERS

APP = SimpleNamespace(status_snapshot=lambda: {"phase": "idle"}, catalog=None)


def call(method, path, query=None, headers=None):
    answer = router.dispatch(APP, Request(method, path, query or {}, headers or {}))
    return answer, json.loads(answer.body) if answer.body and answer.content_type.startswith("application/json") else None


def test_a_misspelt_search_parameter_is_a_400_naming_it_and_the_known_ones():
    answer, error = call("GET", "/nas/search", {"modalty": "CT"})
    assert answer.status == 400 and error["kind"] == "bad_request" and error["field"] == "modalty"
    assert "'modalty'" in error["error"]
    assert error["hint"].startswith("Did you mean modality?")
    assert all(name in error["hint"] for name in SEARCH_PARAMETERS)


def test_a_route_without_query_parameters_refuses_any():
    answer, error = call("GET", "/nas/status", {"verbose": "1"})
    assert answer.status == 400 and error["field"] == "verbose" and "no query parameters" in error["hint"]


@pytest.mark.parametrize("name", sorted(PASSED_THROUGH))
def test_what_orthanc_explorer_adds_to_an_address_passes(name):
    """Orthanc Explorer's authorization tokens (and jQuery's `_`) may be on any address."""
    assert call("GET", "/nas/status", {name: "x"})[0].status == 200


def test_the_panel_page_takes_any_query_and_its_redirections_carry_it_along():
    assert call("GET", "/nas/app/index.html", {"q": "DOE", "token": "t"})[0].status == 200
    answer, _ = call("GET", "/nas/app", {"q": "DOE JOHN"})
    assert answer.status == 301 and answer.headers["Location"] == "index.html?q=DOE+JOHN"


def test_405_is_the_error_object_with_allow():
    answer, error = call("DELETE", "/nas/status")
    assert answer.status == 405 and answer.headers["Allow"] == "GET"
    assert error["kind"] == "bad_request" and error["hint"] == "Use GET." and "DELETE" in error["error"]


def test_head_is_the_get_answer_without_its_body():
    get = router.dispatch(APP, Request("GET", "/nas/app/index.html"))
    head = router.dispatch(APP, Request("HEAD", "/nas/app/index.html"))
    assert (head.status, head.content_type, head.headers) == (get.status, get.content_type, get.headers)
    assert get.body and head.body == b""


@pytest.mark.parametrize("prefix, location", [
    ("/orthanc", "/orthanc/nas/app/index.html"),
    ("/a/b/", "/a/b/nas/app/index.html"),
    ("/", "/nas/app/index.html"),
    ("/pacs, /outer", "/pacs/nas/app/index.html"),
])
def test_a_proxy_naming_its_prefix_gets_one_redirection_to_the_panel(prefix, location):
    for path in ("/nas/app", "/nas/index.html"):
        answer, _ = call("GET", path, headers={"x-forwarded-prefix": prefix})
        assert answer.status == 301 and answer.headers["Location"] == location


@pytest.mark.parametrize("prefix", ["//evil.example", "https://evil.example", "/a b", "x", "/\\evil"])
def test_a_prefix_that_is_not_a_plain_path_is_not_followed(prefix):
    answer, _ = call("GET", "/nas/app", headers={"x-forwarded-prefix": prefix})
    assert answer.headers["Location"] == "index.html"
