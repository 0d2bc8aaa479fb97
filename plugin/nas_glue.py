"""The one module that talks to Orthanc's Python plugin API.

`register(orthanc)` validates the `Nas` settings (an error stops Orthanc,
naming the key), builds the app, routes `/nas/...` to the core's handlers,
adds the NAS button to Orthanc Explorer, names the panel as the plugin's root
page (linked from the plugin lists of Orthanc Explorer and Orthanc Explorer 2)
and stops everything cleanly when Orthanc stops. The `orthanc` module is passed in, so this module can be tested
with a stand-in.
"""

from __future__ import annotations

import importlib
import json
import logging

from orthanc_nas.api import router
from orthanc_nas.app import NasApp
from orthanc_nas.config import parse_settings
from orthanc_nas.errors import NasError
from orthanc_nas.http import Request, Response, parse_query
from orthanc_nas.metrics import MetricsPusher
from orthanc_nas.panel import explorer_script
from orthanc_nas.pathnames import escaped

log = logging.getLogger("orthanc_nas")
_KEEP: list = []  # objects Orthanc holds that must outlive its own references (see register)
# The panel as a plugin's "RootUri": relative to Orthanc Explorer's page /app/explorer.html, which is how
# Orthanc Explorer opens it; Orthanc Explorer 2 rewrites it for its own address (/ui/app/).
PANEL_ROOT_URI = "../nas/app/index.html"
PANEL_DESCRIPTION = "Run Python scripts as Orthanc plugins, here orthanc-nas (Open: the NAS panel)"
#: What the core imports only on first use, which can come in a REST callback: pynetdicom (the echo route,
#: jobs to a modality), the SMB and Windows sources (a connection changed in the panel). Orthanc runs REST
#: callbacks in its HTTP server's threads, whose C stack is 100 KB (measured on 1.13.0; its main thread has
#: 8 MB). Python 3.14 checks the real C stack, and compiling a module's source in such a thread fails
#: ("MemoryError: Parser stack overflowed - Python source too complex to parse"; pynetdicom, pydicom and
#: several of the plugin's modules do), where 3.13 and older count frames instead. So these are imported
#: while the plugin loads, in Orthanc's main thread.
PRELOADED = ("pynetdicom", "pynetdicom.sop_class", "pynetdicom.status", "orthanc_nas.dicom.retrieve",
             "orthanc_nas.dicom.pynetdicom_internals", "orthanc_nas.sources.smb", "orthanc_nas.sources.windows")


class OrthancLogHandler(logging.Handler):
    """Sends the core's log records to Orthanc's log."""

    def __init__(self, orthanc):
        super().__init__()
        self.orthanc = orthanc

    def emit(self, record: logging.LogRecord) -> None:
        message = "NAS: " + escaped(self.format(record))  # a file name that is not UTF-8 is escaped
        if record.levelno >= logging.ERROR:
            self.orthanc.LogError(message)
        elif record.levelno >= logging.WARNING:
            self.orthanc.LogWarning(message)
        else:
            self.orthanc.LogInfo(message)


def can_stream(output) -> bool:
    """Whether this Python plugin can answer in chunks (5.x has StartStreamAnswer; 4.0 only one buffer)."""
    return hasattr(output, "StartStreamAnswer")


def send_status(output, status: int, body: bytes) -> None:
    """An answer other than 200 with a body.

    Plugin 5.x takes `(status, body)`; 4.0 takes `(status, body as str, length)` and refuses bytes.
    Each refuses the other's form with a TypeError before anything is sent, so the first that fits wins.
    """
    try:
        output.SendHttpStatus(status, body)
    except TypeError:
        text = body.decode("utf-8")
        output.SendHttpStatus(status, text, len(body))


def send(output, response: Response) -> None:
    """Answer through Orthanc's HTTP server: a streamed 200 in chunks where the plugin can, else one buffer."""
    if response.status == 301:  # Orthanc wants redirections through its own call
        output.Redirect(response.headers["Location"])
        return
    for name, value in response.headers.items():
        output.SetHttpHeader(name, value)
    if response.status == 200 and response.streamed and can_stream(output):
        stream(output, response)
        return
    body = response.body if not response.streamed else b"".join(response.body)
    if response.status == 200:
        output.AnswerBuffer(body, response.content_type)
    elif response.status == 405:  # as for 301, Orthanc refuses this status through SendHttpStatus
        output.SendMethodNotAllowed(response.headers.get("Allow", "GET"))
    elif not body:
        output.SendHttpStatusCode(response.status)
    else:
        output.SetHttpHeader("Content-Type", response.content_type)
        send_status(output, response.status, body)


def stream(output, response: Response) -> None:
    """Send the body chunk by chunk. Once the first chunk is out, the status can no longer change: a
    failure then is logged and the answer ends short (the connection closes without a complete body)."""
    output.StartStreamAnswer(response.content_type)
    sent = 0
    try:
        for chunk in response.body:
            if chunk:
                output.SendStreamChunk(chunk)
                sent += len(chunk)
    except Exception:
        log.exception("streaming an answer failed after %d bytes", sent)
    finally:
        close = getattr(response.body, "close", None)
        if close is not None:
            close()


def link_panel(orthanc) -> bool:
    """Name the NAS panel as the Python plugin's root page: `GET /plugins/python` then answers it as
    "RootUri", which the plugin lists of Orthanc Explorer and of Orthanc Explorer 2 (Settings, Installed
    plugins) link with an Open button. Orthanc's module has `SetRootUri` and `SetDescription` in every
    Python plugin measured (4.0, 5.0, 7.1); one without them gets no link (returns False)."""
    set_root_uri = getattr(orthanc, "SetRootUri", None)
    if set_root_uri is None:
        log.info("this Python plugin cannot name a root page: the plugin lists of Orthanc's interfaces "
                 "will not link the NAS panel (/nas/app/)")
        return False
    set_root_uri(PANEL_ROOT_URI)
    set_description = getattr(orthanc, "SetDescription", None)
    if set_description is not None:
        set_description(PANEL_DESCRIPTION)
    return True


def make_callback(app: NasApp):
    def on_rest(output, uri, **request):
        body = request.get("body") or b""
        req = Request(
            method=request.get("method", "GET"),
            path=uri,
            query=parse_query(request.get("get")),
            headers={k.lower(): v for k, v in (request.get("headers") or {}).items()},
            body=body.encode("utf-8") if isinstance(body, str) else bytes(body),
            can_stream=can_stream(output),
        )
        send(output, router.dispatch(app, req))
    return on_rest


def orthanc_modalities(orthanc) -> list:
    """Orthanc's DicomModalities as they are now (also those added through its REST API), as `Peer`s."""
    from orthanc_nas.dicom import Peer

    found = json.loads(orthanc.RestApiGet("/modalities?expand"))
    if isinstance(found, list):  # an Orthanc without ?expand: one request per modality
        found = {name: json.loads(orthanc.RestApiGet(f"/modalities/{name}/configuration")) for name in found}
    return [Peer(m["AET"], m.get("Host"), m.get("Port")) for m in found.values() if isinstance(m, dict)]


class OrthancRest:
    """The core's `OrthancHost`: this Orthanc's REST API, called in-process (no HTTP, no credentials)."""

    def __init__(self, orthanc):
        self.orthanc = orthanc

    def _get(self, uri: str):
        return json.loads(self.orthanc.RestApiGet(uri))

    def lookup(self, uid: str, level: str) -> str | None:
        found = json.loads(self.orthanc.RestApiPost("/tools/lookup", uid))
        return next((f["ID"] for f in found if f.get("Type") == level), None)

    def store(self, data: bytes) -> dict:
        return json.loads(self.orthanc.RestApiPost("/instances", data))

    def instance_md5(self, instance_id: str) -> str | None:
        try:
            md5 = self.orthanc.RestApiGet(f"/instances/{instance_id}/attachments/dicom/md5")
        except Exception:  # the instance is gone (Orthanc answers 404 as an exception)
            return None
        return (md5.decode("ascii") if isinstance(md5, bytes) else str(md5)).strip() or None

    def delete_instance(self, instance_id: str) -> None:
        self.orthanc.RestApiDelete(f"/instances/{instance_id}")

    def series(self, series_id: str) -> dict:
        return self._get(f"/series/{series_id}")

    def instances(self, series_id: str) -> dict:
        found = self._get(f"/series/{series_id}/instances")
        return {i["MainDicomTags"].get("SOPInstanceUID"): i["ID"] for i in found}

    def plugins(self) -> list[str]:
        return self._get("/plugins")

    def has_labels(self) -> bool:
        """Whether this Orthanc has labels (1.12+): its /system says so, the version is not looked at."""
        return bool(self._get("/system").get("HasLabels"))

    def add_label(self, series_id: str, label: str) -> None:
        self.orthanc.RestApiPut(f"/series/{series_id}/labels/{label}", b"")

    def modalities(self) -> dict:
        from orthanc_nas.retrieval import Peer

        found = self._get("/modalities?expand")
        if isinstance(found, list):  # an Orthanc without ?expand: one request per modality
            found = {name: self._get(f"/modalities/{name}/configuration") for name in found}
        return {name: Peer(name, m["AET"], m.get("Host", ""), m.get("Port", 104))
                for name, m in found.items() if isinstance(m, dict)}


def start_dicom_node(orthanc, app: NasApp, config: dict):
    """Start the DICOM node. With RegisterInOrthanc, returns what adds it to Orthanc's modalities (id `nas`),
    to be called once Orthanc runs (its REST API is not ready while plugins load); else None."""
    from orthanc_nas.dicom import Peer

    # Orthanc queries and retrieves as its DicomAet; it receives on DicomPort only with its DICOM server on
    own = Peer(config.get("DicomAet", "ORTHANC"), "127.0.0.1",
               config.get("DicomPort", 4242) if config.get("DicomServerEnabled", True) else None)
    if not app.start_dicom_node(lambda: orthanc_modalities(orthanc), own) or not app.settings.DicomServer.RegisterInOrthanc:
        return None
    server = app.settings.DicomServer
    host = "127.0.0.1" if server.Host in ("0.0.0.0", "::", "") else server.Host

    def register_modality():
        try:
            orthanc.RestApiPut("/modalities/nas", json.dumps({"AET": server.AET, "Host": host,
                                                              "Port": app.dicom_node.port}))
            log.info("the DICOM node is Orthanc's modality \"nas\" (%s at %s:%d)", server.AET, host,
                     app.dicom_node.port)
        except Exception as exc:
            log.error("could not add the DICOM node to Orthanc's modalities: %s", exc)

    return register_modality


def preload() -> None:
    """Import `PRELOADED` now (see there): no REST callback then compiles a module in Orthanc's threads."""
    for name in PRELOADED:
        importlib.import_module(name)


def register(orthanc) -> NasApp:
    preload()
    handler = OrthancLogHandler(orthanc)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    config = json.loads(orthanc.GetConfiguration())
    try:
        settings = parse_settings(config.get("Nas"), config)
        app = NasApp(settings)
    except NasError as exc:
        orthanc.LogError(f"NAS plugin: {exc.message}. {exc.hint}")
        raise

    callback = make_callback(app)
    # Orthanc's Python plugin 5 drops its reference to the callback after the interpreter has
    # finalized; were it the last one, the whole app would be freed then and Orthanc would crash
    # while stopping (seen on 1.12). The module keeps one, released while Python is still alive.
    _KEEP.append(callback)
    orthanc.RegisterRestCallback("/nas/(.*)", callback)
    app.start_retrievals(OrthancRest(orthanc))
    app.start_share_listener()  # a port in use is logged; the rest of the plugin works without it
    register_node = start_dicom_node(orthanc, app, config) if app.settings.DicomServer.Enabled else None  # likewise
    script = explorer_script()
    if script is not None:
        orthanc.ExtendOrthancExplorer(script)
    link_panel(orthanc)

    # pushed once Orthanc runs: while plugins load, Orthanc refuses SetMetricsValue with an error line
    # per figure ("Plugin trying to call the database during its initialization")
    metrics = MetricsPusher(app, lambda name, value: orthanc.SetMetricsValue(
        name, value, orthanc.MetricsType.DEFAULT))
    app.start_schedule()

    def on_change(change_type, level, resource_id):
        if change_type == orthanc.ChangeType.ORTHANC_STARTED:
            metrics.start()
            if register_node is not None:
                register_node()
        if change_type == orthanc.ChangeType.ORTHANC_STOPPED:
            metrics.stop()
            app.close()

    _KEEP.append(on_change)
    orthanc.RegisterOnChangeCallback(on_change)
    log.info("ready: data in %s, NAS %s", app.settings.DataDirectory,
             app.settings.Connection.Path or app.settings.Connection.Host or "not configured yet")
    return app
