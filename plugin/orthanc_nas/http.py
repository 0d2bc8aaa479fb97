"""Small request/response objects and a router, independent of Orthanc and of WSGI.

Handlers are plain functions `handler(app, request, *groups) -> Response`.
The Orthanc glue and the WSGI adapter both turn their requests into `Request`
and send `Response` back; `dispatch` is the one place that turns domain
exceptions into the spec's error object.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote_plus, urlsplit

from .errors import (
    BadRequest,
    CrossSiteRequest,
    MethodNotAllowed,
    NasError,
    NotFound,
    UnsupportedMediaType,
    shown,
)

log = logging.getLogger("orthanc_nas")


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""
    client: str = ""
    #: whether the server can send a body in chunks (Orthanc's Python plugin 4.x cannot)
    can_stream: bool = True

    def json(self, *, required: bool = True) -> dict:
        """The JSON object in the body.

        415 unless the request says `Content-Type: application/json` (also for an empty body: an HTML form
        of another site can send any other type without the browser asking first, see `check_same_origin`);
        400 if the body is malformed, larger than MAX_JSON_BYTES or nested deeper than MAX_JSON_DEPTH;
        {} for an empty optional body.
        """
        if "content-disposition" in self.headers:
            # Orthanc 1.10 hands each field of a multipart/form-data body to the plugin as a request of its
            # own, with only that field's headers (Content-Disposition: form-data, and the field's type,
            # which a page of any site can set to application/json; no Origin, no Sec-Fetch-Site)
            raise UnsupportedMediaType("the body must be application/json, not a field of a multipart form")
        ctype = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise UnsupportedMediaType(f"the body must be application/json, not {ctype}" if ctype else
                                       "the body must be application/json; the request has no Content-Type")
        if not self.body.strip():
            if required:
                raise BadRequest("the request needs a JSON body")
            return {}
        check_json_shape(self.body)
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        _check_text(data, "")
        return data


#: a body of the /nas/ routes is a few settings or a list of series keys: far below these
MAX_JSON_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32
# a string (skipped whole, escapes included) or one bracket
_JSON_NESTING = re.compile(rb'"(?:[^"\\]++|\\.)*+"?|[\[\]{}]')


def check_json_shape(body: bytes) -> None:
    """BadRequest if `body` is too large or nests arrays and objects deeper than MAX_JSON_DEPTH.

    Checked on the bytes before `json.loads`, whose C parser recurses once per level: on one of
    Orthanc's HTTP threads (a small native stack) a body of a few hundred `[` overflows that stack and
    ends the whole Orthanc process before Python's recursion limit is reached.
    """
    if len(body) > MAX_JSON_BYTES:
        raise BadRequest(f"the JSON body is larger than {MAX_JSON_BYTES // 1024} KiB")
    depth = 0
    for match in _JSON_NESTING.finditer(body):
        token = match.group()
        if token in (b"[", b"{"):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels",
                                 "The /nas/ routes take flat objects; see the README for their bodies.")
        elif token in (b"]", b"}"):
            depth -= 1


#: a NUL (values lose theirs when stored, PostgreSQL's text refuses it, FTS5 ends its query there) or a
#: lone UTF-16 surrogate (not text: no UTF-8 database holds it; a CLI argument not in UTF-8 gives one)
_NOT_TEXT = re.compile("[\0\ud800-\udfff]")


def check_plain_text(text: str, what: str, field: str | None = None) -> None:
    """BadRequest naming `what` (a parameter, a part of the path) when `text` holds a NUL or a lone surrogate."""
    if found := _NOT_TEXT.search(text):
        raise BadRequest(f"{what} holds {'a NUL character' if found[0] == chr(0) else 'a lone surrogate'}, "
                         "which no indexed value holds", "Send the text as UTF-8 without control characters.",
                         field=field)


def _check_text(value, where: str) -> None:
    """BadRequest naming the field whose text is not Unicode: JSON's `\\ud800` escapes give lone surrogates,
    which no UTF-8 file, database or answer can hold. (Depth is bounded by check_json_shape.)"""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_text(key, where or "the body")
            _check_text(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for item in value:
            _check_text(item, where)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            what = f"field {where!r}" if where else "the body"
            raise BadRequest(f"{what} holds a lone UTF-16 surrogate (\\ud800-\\udfff), "
                             "which is not text", "Send the text as UTF-8 or with paired \\u escapes.") from None


@dataclass
class Response:
    status: int = 200
    body: bytes | Iterable[bytes] = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def streamed(self) -> bool:
        return not isinstance(self.body, bytes | bytearray)


def json_response(data, status: int = 200, headers: dict | None = None) -> Response:
    body = json.dumps(data, ensure_ascii=False).encode("utf-8")
    return Response(status, body, "application/json; charset=utf-8", dict(headers or {}))


def error_response(exc: NasError) -> Response:
    """The spec's error object with the exception's status (and headers such as a 405's `Allow`)."""
    return json_response(exc.to_json(), exc.status, exc.headers)


def parse_query(raw: dict | str | None) -> dict[str, str]:
    """Decode a query: Orthanc hands it over raw (`q=john+doe`), see ENVIRONMENT.md."""
    if not raw:
        return {}
    if isinstance(raw, str):
        pairs = (part.partition("=") for part in raw.split("&") if part)
        return {unquote_plus(k): unquote_plus(v) for k, _, v in pairs}
    return {unquote_plus(str(k)): unquote_plus(str(v)) for k, v in raw.items()}


#: methods that read only; every other one changes state and must come from Orthanc's own pages or a program
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def check_same_origin(request: Request) -> None:
    """CrossSiteRequest if a browser marks the request as sent by another web site (CSRF).

    A logged-in user's browser adds Orthanc's credentials to requests that any other site makes it
    send (an HTML form: GET or POST, any body but application/json). Browsers say where a request
    comes from: `Sec-Fetch-Site` (Fetch Metadata, every current browser) is `same-origin` for the NAS
    panel and `cross-site` for another site's form; `Origin` names the page's site on every POST. A
    request without either comes from a program (curl, a script), which holds its own credentials.
    "Own" origin: the host this request was sent to (`Host`, or `X-Forwarded-Host` set by a reverse
    proxy), so the panel works under any name and behind a proxy.
    """
    site = request.headers.get("sec-fetch-site", "").strip().lower()
    if site in ("same-origin", "none"):  # "none": typed by the user, not caused by a page
        return
    if site == "cross-site":
        raise CrossSiteRequest("refused a request that the browser marks as sent by another web site")
    origin = request.headers.get("origin", "").strip()
    if not origin and not site:
        return
    own = _own_hosts(request)
    host = urlsplit(origin.lower()).netloc if origin else ""
    if not host or host not in own:  # "null" (a sandboxed or privacy-hidden page) is never our own
        raise CrossSiteRequest(f"refused a request from the web page of {origin or 'another site'}: "
                               "it is not Orthanc's own")


def _own_hosts(request: Request) -> set[str]:
    """`host[:port]` under which this Orthanc was reached: Host and every X-Forwarded-Host entry."""
    names = [request.headers.get("host", "")]
    names += request.headers.get("x-forwarded-host", "").split(",")
    own = set()
    for name in names:
        name = name.strip().lower()
        if name:
            own.add(name)
            for port in (":80", ":443"):  # Origin leaves out a default port that Host may carry
                if name.endswith(port):
                    own.add(name[:-len(port)])
    return own


Handler = Callable[..., Response]

#: query parameters that Orthanc's pages and authorization plugins may add to an address of any route:
#: the tokens Orthanc Explorer carries in its address (explorer-extension/app.js sends the same names)
#: and jQuery's cache buster `_`. Accepted and ignored everywhere.
PASSED_THROUGH = frozenset({"token", "auth-token", "authorization", "_"})
#: a route whose query is read by someone else (the panel's own page reads `?q=` in the browser)
ANY_QUERY = None


def check_query(query: Collection[str], accepted: Collection[str]) -> None:
    """BadRequest naming the first parameter of `query` that is neither `accepted` nor PASSED_THROUGH, with a
    hint listing the accepted ones (and the closest, for a typo such as `modalty`)."""
    unknown = sorted(set(query) - set(accepted) - PASSED_THROUGH)
    if not unknown:
        return
    name = unknown[0]
    if not accepted:
        hint = "This route takes no query parameters."
    else:
        close = difflib.get_close_matches(name, accepted, n=1)
        hint = (f"Did you mean {close[0]}? " if close else "") + f"This route takes {', '.join(accepted)}."
    raise BadRequest(f"unknown query parameter {shown(name)}", hint, field=name)


class Router:
    """Maps (method, path pattern) to handlers; answers 404/405 with the error object.

    A GET route names the query parameters it takes (`query`; none by default): any other one is a 400,
    so that a misspelt filter is not silently ignored. HEAD is answered by the GET handler, without body.
    """

    def __init__(self) -> None:
        self.routes: list[tuple[re.Pattern, dict[str, tuple[Handler, tuple[str, ...] | None]]]] = []

    def add(self, method: str, pattern: str, handler: Handler, query: Iterable[str] | None = ()) -> None:
        regex = re.compile(f"^{pattern}$")
        entry = (handler, None if query is ANY_QUERY else tuple(query))
        for existing, methods in self.routes:
            if existing.pattern == regex.pattern:
                methods[method] = entry
                return
        self.routes.append((regex, {method: entry}))

    def route(self, method: str, pattern: str, *, query: Iterable[str] | None = ()) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.add(method, pattern, handler, query)
            return handler
        return decorate

    def dispatch(self, app, request: Request) -> Response:
        try:
            for regex, methods in self.routes:
                match = regex.match(request.path)
                if not match:
                    continue
                entry = methods.get(request.method) or (methods.get("GET") if request.method == "HEAD" else None)
                if entry is None:
                    allowed = ", ".join(sorted(methods))
                    raise MethodNotAllowed(f"{request.method} is not allowed on {shown(request.path, 200)}",
                                           f"Use {allowed}.", allow=allowed)
                handler, accepted = entry
                for part in match.groups():
                    check_plain_text(part, f"the path segment {shown(part, 60)}")
                if request.method not in SAFE_METHODS:
                    check_same_origin(request)
                elif accepted is not ANY_QUERY:
                    check_query(request.query, accepted)
                response = handler(app, request, *match.groups())
                if request.method == "HEAD":  # the GET answer's status and headers, without its body
                    close = getattr(response.body, "close", None)
                    if close is not None:
                        close()
                    response.body = b""
                return response
            raise NotFound(f"no such route: {shown(request.path, 200)}", "See the REST routes in the README.")
        except NasError as exc:
            return error_response(exc)
        except Exception:
            log.exception("NAS route %s %s failed", request.method, request.path)
            return json_response({"error": "internal error", "kind": "internal",
                                  "hint": "See Orthanc's log for details."}, 500)
