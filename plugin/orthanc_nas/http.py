"""Small request/response objects and a router, independent of Orthanc and of WSGI.

Handlers are plain functions `handler(app, request, *groups) -> Response`.
The Orthanc glue and the WSGI adapter both turn their requests into `Request`
and send `Response` back; `dispatch` is the one place that turns domain
exceptions into the spec's error object.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote_plus

from .errors import BadRequest, NasError, NotFound, UnsupportedMediaType

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
        """The JSON object in the body. 415 if not JSON, 400 if malformed; {} for an empty optional body."""
        if not self.body.strip():
            if required:
                raise BadRequest("the request needs a JSON body")
            return {}
        ctype = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and ctype != "application/json" and not ctype.endswith("+json"):
            raise UnsupportedMediaType(f"the body must be application/json, not {ctype}")
        try:
            data = json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        return data


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
    return json_response(exc.to_json(), exc.status)


def parse_query(raw: dict | str | None) -> dict[str, str]:
    """Decode a query: Orthanc hands it over raw (`q=john+doe`), see ENVIRONMENT.md."""
    if not raw:
        return {}
    if isinstance(raw, str):
        pairs = (part.partition("=") for part in raw.split("&") if part)
        return {unquote_plus(k): unquote_plus(v) for k, _, v in pairs}
    return {unquote_plus(str(k)): unquote_plus(str(v)) for k, v in raw.items()}


Handler = Callable[..., Response]


class Router:
    """Maps (method, path pattern) to handlers; answers 404/405 with the error object."""

    def __init__(self) -> None:
        self.routes: list[tuple[re.Pattern, dict[str, Handler]]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.compile(f"^{pattern}$")
        for existing, methods in self.routes:
            if existing.pattern == regex.pattern:
                methods[method] = handler
                return
        self.routes.append((regex, {method: handler}))

    def route(self, method: str, pattern: str) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.add(method, pattern, handler)
            return handler
        return decorate

    def dispatch(self, app, request: Request) -> Response:
        try:
            for regex, methods in self.routes:
                match = regex.match(request.path)
                if not match:
                    continue
                handler = methods.get(request.method) or (
                    methods.get("GET") if request.method == "HEAD" else None)
                if handler is None:
                    allowed = ", ".join(sorted(methods))
                    return json_response({"error": f"{request.method} is not allowed on {request.path}",
                                          "kind": "bad_request", "hint": f"Use {allowed}."}, 405,
                                         {"Allow": allowed})
                return handler(app, request, *match.groups())
            raise NotFound(f"no such route: {request.path}", "See the REST routes in the README.")
        except NasError as exc:
            return error_response(exc)
        except Exception:
            log.exception("NAS route %s %s failed", request.method, request.path)
            return json_response({"error": "internal error", "kind": "internal",
                                  "hint": "See Orthanc's log for details."}, 500)
