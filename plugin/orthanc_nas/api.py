"""The `/nas/` REST routes: plain functions from `Request` to `Response`."""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote, urlencode

from .allowed import check_web_connection
from .archive import content_disposition, series_archive
from .config import parse_web_connection, parse_web_settings
from .errors import BadRequest, ConfigError, NasError, NotFound, NotSupported, shown
from .http import ANY_QUERY, Request, Response, Router, json_response
from .jobs import ORTHANC, parse_retrieve_request
from .panel import panel_file
from .retrieval import echo
from .search import SEARCH_PARAMETERS, SearchParams, patient_series, search, series_detail
from .shares import parse_share_request
from .sources.scope import parse_folder
from .status import iso

log = logging.getLogger("orthanc_nas")

router = Router()


@router.route("GET", "/nas/status")
def get_status(app, request: Request) -> Response:
    return json_response(app.status_snapshot())


@router.route("POST", "/nas/index")
def start_index(app, request: Request) -> Response:
    body = request.json(required=False)
    unknown = set(body) - {"full", "path"}
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r} in the body",
                         'The body may hold {"full": true, "path": "2024/11"}.', field=sorted(unknown)[0])
    full = body.get("full", False)
    if not isinstance(full, bool):
        raise BadRequest("field 'full' must be true or false", field="full")
    folder = parse_folder(body.get("path", ""))
    app.source()  # a missing connection is a 400 now, not a failed run later
    app.indexer.start(full=full, folder=folder)
    return json_response({"started": True}, 202)


@router.route("GET", "/nas/runs")
def list_runs(app, request: Request) -> Response:
    """The last indexing runs, newest first (SPEC "GET /nas/runs")."""
    return json_response([{**run, "started_at": iso(run["started_at"]), "finished_at": iso(run["finished_at"])}
                          for run in app.catalog.runs()])


@router.route("DELETE", "/nas/index")
def stop_index(app, request: Request) -> Response:
    stopping = app.stop_indexing()
    return json_response({"stopping": stopping, "phase": app.status_snapshot()["phase"]})


@router.route("GET", "/nas/search", query=SEARCH_PARAMETERS)
def search_series(app, request: Request) -> Response:
    params = SearchParams.parse(request.query)
    result = search(app.catalog.reader(), params)
    return json_response(result.series, headers={"X-Total-Count": str(result.total)})


@router.route("GET", "/nas/series/([^/]+)")
def get_series(app, request: Request, key: str) -> Response:
    return json_response(series_detail(app.catalog.reader(), key))


@router.route("GET", "/nas/series/([^/]+)/archive")
def series_zip(app, request: Request, key: str) -> Response:
    """The series as a zip, streamed straight from the NAS to an authenticated Orthanc user."""
    if not request.can_stream:
        raise NotSupported("this Orthanc cannot stream a zip through its own port (Python plugin 4.x)",
                           "Create a share link (the Share button, or POST /nas/shares) and download "
                           "the series from it; or use Orthanc 1.12 with Python plugin 5.")
    archive, filename = series_archive(app.catalog, app.source(), [key])
    return Response(200, archive, "application/zip", {"Content-Disposition": content_disposition(filename)})


@router.route("POST", "/nas/shares")
def create_share(app, request: Request) -> Response:
    settings = app.settings
    options = parse_share_request(request.json(), settings.DefaultShareHours, settings.MaxShareHours)
    known = app.catalog.series_rows(options.series)
    for key in options.series:
        if key not in known:
            raise NotFound(f"unknown series_key {shown(key)}", "Use a series_key found by GET /nas/search.")
    share, token = app.shares.create_from(options)
    log.info("share %s created: %d series, expires at %s", share.id, len(share.series), iso(share.expires_at))
    answer = {"id": share.id, "token": token, "url": app.share_url(token), "expires_at": iso(share.expires_at),
              "series": share.series, "label": share.label, "max_downloads": share.max_downloads,
              "passphrase": share.passphrase_hash is not None, "layout": share.layout}
    if app.listener is None or not app.listener.running:
        answer["warning"] = ("The share listener is not running (see Orthanc's log): this link will work only "
                             "once it is.")
    return json_response(answer, 201)


#: series of each share described in `GET /nas/shares`' `about`
SHARE_ABOUT = 3
ABOUT_FIELDS = ("PatientName", "PatientID", "StudyDate", "StudyDescription", "SeriesNumber", "SeriesDescription",
                "Modality")


@router.route("GET", "/nas/shares")
def list_shares(app, request: Request) -> Response:
    """Every share, newest first (`ShareStore.list`), each with `about`: its first SHARE_ABOUT series still
    in the index, as `ABOUT_FIELDS` (fewer, or [], for series gone from the index or without an index), so
    that links without a label can be told apart."""
    shares = app.shares.list()
    wanted = {key for share in shares for key in share["series"][:SHARE_ABOUT]}
    try:
        rows = app.catalog.series_rows(sorted(wanted)) if wanted and app.catalog.exists() else {}
    except NasError as exc:  # the index's database is down: the links are listed all the same
        log.warning("shares listed without what they hold: %s", exc.message)
        rows = {}
    for share in shares:
        share["about"] = [{name: rows[key][name] for name in ABOUT_FIELDS}
                          for key in share["series"][:SHARE_ABOUT] if key in rows]
    return json_response(shares)


@router.route("DELETE", "/nas/shares/([^/]+)")
def revoke_share(app, request: Request, share_id: str) -> Response:
    answer = app.shares.revoke(share_id)
    log.info("share %s revoked", share_id)
    return json_response(answer)


@router.route("GET", "/nas/config")
def get_config(app, request: Request) -> Response:
    return json_response(app.settings.public())


@router.route("PUT", "/nas/config")
def put_config(app, request: Request) -> Response:
    """Validate, save, reconnect, then test the new connection. The settings are saved even when the test
    fails (a NAS may be down for a moment, or set up ahead of time): the answer's `test` says so."""
    settings = parse_web_settings(request.json(), app.settings)
    check_web_connection(settings.Connection, app.settings, app.base_settings.Connection)
    app.configure(settings)
    return json_response({**app.settings.public(), "test": app.test_connection()})


@router.route("POST", "/nas/config/test")
def test_config(app, request: Request) -> Response:
    body = request.json(required=False)
    unknown = sorted(set(body) - {"Connection"})
    if unknown:
        raise ConfigError(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}",
                          'The body is {"Connection": {...}}, or empty to test the saved connection.',
                          field=unknown[0])
    connection = parse_web_connection(body["Connection"], app.settings.Connection) if body else None
    if connection is not None:
        check_web_connection(connection, app.settings, app.base_settings.Connection)
    result = app.test_connection(connection)
    return json_response(result, 200 if result["ok"] else 502)


@router.route("POST", "/nas/retrieve")
def start_retrieval(app, request: Request) -> Response:
    series, to = parse_retrieve_request(request.json())
    app.source()  # a missing NAS connection is a 400 now, not a failed job later
    return json_response({"job": _retrievals(app).submit(series, to)}, 202)


@router.route("GET", "/nas/jobs")
def list_jobs(app, request: Request) -> Response:
    return json_response(_retrievals(app).list())


@router.route("GET", "/nas/jobs/([^/]+)")
def get_job(app, request: Request, job_id: str) -> Response:
    return json_response(_retrievals(app).describe(job_id))


@router.route("DELETE", "/nas/jobs/([^/]+)")
def cancel_job(app, request: Request, job_id: str) -> Response:
    return json_response(_retrievals(app).cancel(job_id))


@router.route("GET", "/nas/destinations")
def list_destinations(app, request: Request) -> Response:
    peers = _retrievals(app).host.modalities()
    return json_response([{"id": ORTHANC}] + [{"id": p.id, "AET": p.AET, "Host": p.Host, "Port": p.Port}
                                              for p in sorted(peers.values(), key=lambda p: p.id)])


@router.route("POST", "/nas/destinations/([^/]+)/echo")
def echo_destination(app, request: Request, destination: str) -> Response:
    request.json(required=False)  # a body, if any, is JSON (state-changing routes take JSON only)
    retrievals = _retrievals(app)
    peer = retrievals.destination(unquote(destination))
    if peer is None:
        return json_response({"ok": True, "elapsed_ms": 0.0})  # Orthanc itself: this plugin runs in it
    try:
        return json_response(echo(peer, app.settings.DicomServer.AET))
    except NasError as exc:
        return json_response({"ok": False, **exc.to_json()}, exc.status)


@router.route("GET", "/nas/patients/([^/]+)/series")
def get_patient_series(app, request: Request, patient_id: str) -> Response:
    """The NAS series of one PatientID, newest first: the priors of a study already in Orthanc."""
    return json_response(patient_series(app.catalog.reader(), unquote(patient_id)))


@router.route("GET", "/nas/dicom/retrievals", query=("limit",))
def list_dicom_retrievals(app, request: Request) -> Response:
    """The DICOM node's audit: its C-MOVEs and C-GETs, newest first (`limit`, 1 to 1000, default 100)."""
    from .dicom.audit import listed, parse_listing

    limit = parse_listing(request.query)
    audit = app.dicom_audit()
    return json_response([listed(item) for item in audit.latest(limit)] if audit is not None else [])


def _retrievals(app):
    if app.retrievals is None:
        raise NotSupported("jobs of retrieval run only inside Orthanc", "Use the REST routes of the plugin in Orthanc.")
    return app.retrievals


# Orthanc hands `/nas/app/` over as `/nas/app` (1.10 to 1.13 alike), so the two cannot be told apart, and a
# relative Location means something else from each. A reverse proxy that names the prefix it mounts Orthanc
# under (X-Forwarded-Prefix; none for Orthanc reached directly) gets one redirection to the panel. Otherwise
# both are sent on to "index.html", which from `/nas/app/` is the panel and from `/nas/app` is
# `/nas/index.html`, sent on in turn: an absolute "/nas/app/index.html" would leave the panel behind a proxy
# that adds a prefix without saying so (as the Orthanc Book's nginx sample does). The query goes along.
_PREFIX = re.compile(r"(?:/[A-Za-z0-9._~!$&'()*+,;=:@%-]+)*")


def forwarded_prefix(request: Request) -> str | None:
    """The path a reverse proxy mounts Orthanc under (`X-Forwarded-Prefix`, the first of a list), "" for
    none said, without its final slash; None when absent or not a plain path (a `//host` would redirect
    to another site)."""
    value = request.headers.get("x-forwarded-prefix")
    if value is None:
        return None
    prefix = value.split(",")[0].strip().rstrip("/")
    return prefix if _PREFIX.fullmatch(prefix) else None


def _panel_location(request: Request, relative: str) -> Response:
    prefix = forwarded_prefix(request)
    target = relative if prefix is None else f"{prefix}/nas/app/index.html"
    query = urlencode(request.query)
    return Response(301, b"", headers={"Location": f"{target}?{query}" if query else target})


@router.route("GET", "/nas/app", query=ANY_QUERY)
def panel_redirect(app, request: Request) -> Response:
    return _panel_location(request, "index.html")


@router.route("GET", "/nas/index.html", query=ANY_QUERY)
def panel_redirect_without_slash(app, request: Request) -> Response:
    return _panel_location(request, "app/index.html")


@router.route("GET", "/nas/app/([^/]+)", query=ANY_QUERY)  # the page reads its own ?q=
def get_panel_file(app, request: Request, name: str) -> Response:
    return panel_file(name)
