"""Domain exceptions: each knows its HTTP status, its `kind` and a hint for a person.

One place (`api.error_response`) turns them into the spec's error object
`{"error", "kind", "hint"}`; anything else raised by a handler is a logged 500.
"""

from __future__ import annotations

MAX_SHOWN = 64  # characters of a client's identifier quoted back in an error message
#: failure statuses of a C-FIND (PS3.4 C.4.1.1.4): "Refused: Out of Resources" (the node lacks, for now,
#: something it needs: retry later) and "Failed: Unable to process" (any other reason)
DICOM_OUT_OF_RESOURCES, DICOM_UNABLE_TO_PROCESS = 0xA700, 0xC000
DICOM_COMMENT_LENGTH = 64  # Error Comment (0000,0902) is LO: at most 64 characters (PS3.7 Annex C)


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """An identifier from a request, quoted for a message: at most `limit` characters (then `…`), escaped,
    so that an answer never echoes a client's text of any length."""
    text = str(value)
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


class NasError(Exception):
    """Base of every error the product reports to a person or a client."""

    status = 500
    kind = "internal"
    default_hint = "See Orthanc's log for details."
    headers: dict[str, str] = {}  # HTTP headers the answer needs besides the error object
    #: the failure status of a C-FIND this error ends (PS3.4 C.4.1.1.4; `dicom.query.failure` maps it for
    #: C-MOVE and C-GET) and its Error Comment for the peer's user (at most 64 ASCII characters; None: the
    #: message, cut)
    dicom_status = DICOM_UNABLE_TO_PROCESS
    dicom_comment: str | None = None

    def __init__(self, message: str, hint: str | None = None, *, status: int | None = None,
                 field: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        self.field = field  # the setting or body field at fault (e.g. "Connection.Host"), if one is
        if status is not None:
            self.status = status

    def to_json(self) -> dict:
        """The spec's error object; `field` is added when one field is at fault (forms mark it)."""
        data = {"error": self.message, "kind": self.kind, "hint": self.hint}
        if self.field:
            data["field"] = self.field
        return data

    def error_comment(self) -> str:
        """The Error Comment (0000,0902) of a DICOM failure response: ASCII, at most 64 characters."""
        text = (self.dicom_comment or self.message).encode("ascii", "replace").decode("ascii")
        return text[:DICOM_COMMENT_LENGTH]


class ConfigError(NasError):
    """The `Nas` settings (orthanc.json or the saved connection) are wrong."""

    status = 400
    kind = "config"
    default_hint = "Correct the named setting in the \"Nas\" section of orthanc.json (or in the NAS panel)."


class BadRequest(NasError):
    status = 400
    kind = "bad_request"
    default_hint = "Correct the request; see the REST routes in the README."


class MethodNotAllowed(BadRequest):
    """The route exists, not with this method; `allow` lists those it takes (the answer's `Allow` header).
    Orthanc's HTTP server sends a 405 only through its own call, without this body (see nas_glue.send)."""

    status = 405

    def __init__(self, message: str, hint: str | None = None, *, allow: str):
        super().__init__(message, hint)
        self.headers = {"Allow": allow}


class UnsupportedMediaType(BadRequest):
    status = 415
    default_hint = "Send the body as JSON with the header Content-Type: application/json."


class CrossSiteRequest(NasError):
    """A browser says the request comes from another web site (Fetch Metadata, Origin)."""

    status = 403
    kind = "permission"
    default_hint = ("Changes to the NAS settings, indexing and shares are made from Orthanc's own pages "
                    "(the NAS panel) or by a program calling the REST API, not from another web site.")


class NotFound(NasError):
    status = 404
    kind = "not_found"
    default_hint = "Check the identifier or the path."


class Busy(NasError):
    status = 409
    kind = "busy"
    default_hint = "Wait for the running job to finish, or stop it with DELETE /nas/index."


class NasUnavailable(NasError):
    """Base of the errors met while talking to the NAS (answered as 502 by the REST routes)."""

    status = 502
    dicom_status = DICOM_OUT_OF_RESOURCES


class NasNetworkError(NasUnavailable):
    kind = "network"
    default_hint = (
        "Check that the NAS is switched on and reachable from this server (host, port, firewall). "
        "If the network to the NAS is slow or unreliable, mount the share locally and point the "
        "connection at the mounted folder instead."
    )


class NasAuthError(NasUnavailable):
    kind = "auth"
    default_hint = "Check the user name, password and domain for the NAS share."


class NasPermissionError(NasUnavailable):
    kind = "permission"
    default_hint = "Give the account Orthanc uses read access to this folder on the NAS."


class NasNotFound(NasUnavailable):
    kind = "not_found"
    default_hint = "Check the share name and the folder path; the NAS does not have them."


class Gone(NasError):
    status = 410
    kind = "not_found"
    default_hint = "Ask the sender for a new link."


class FileChanged(NasError):
    """A NAS file is gone or differs from the index: a download built from the index must break off."""

    status = 409
    kind = "not_found"
    default_hint = "The files on the NAS changed since indexing: run indexing again, then download again."


class TooManyRequests(NasError):
    status = 429
    kind = "bad_request"
    default_hint = "Too many wrong links from your address; wait a few minutes and try again."


class NotSupported(NasError):
    """This Orthanc cannot do what was asked (e.g. stream a large answer: Python plugin 4.x)."""

    status = 501
    kind = "bad_request"


class Internal(NasError):
    status = 500
    kind = "internal"
