"""The `/nas/` REST routes: plain functions from `Request` to `Response`."""

from __future__ import annotations

from .errors import BadRequest
from .http import Request, Response, Router, json_response
from .search import SearchParams, search, series_detail

router = Router()


@router.route("GET", "/nas/status")
def get_status(app, request: Request) -> Response:
    return json_response(app.status.snapshot())


@router.route("POST", "/nas/index")
def start_index(app, request: Request) -> Response:
    body = request.json(required=False)
    unknown = set(body) - {"full"}
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r} in the body", 'The body may hold {"full": true}.')
    full = body.get("full", False)
    if not isinstance(full, bool):
        raise BadRequest("field 'full' must be true or false")
    app.source()  # a missing connection is a 400 now, not a failed run later
    app.indexer.start(full=full)
    return json_response({"started": True}, 202)


@router.route("DELETE", "/nas/index")
def stop_index(app, request: Request) -> Response:
    return json_response({"stopping": app.indexer.stop(), "phase": app.status.phase})


@router.route("GET", "/nas/search")
def search_series(app, request: Request) -> Response:
    params = SearchParams.parse(request.query)
    result = search(app.catalog.reader(), params)
    return json_response(result.series, headers={"X-Total-Count": str(result.total)})


@router.route("GET", "/nas/series/([^/]+)")
def get_series(app, request: Request, key: str) -> Response:
    return json_response(series_detail(app.catalog.reader(), key))
