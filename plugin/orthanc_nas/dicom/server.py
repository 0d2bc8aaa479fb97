"""The node itself: a pynetdicom AE on `DicomServer.Host:Port`, its handlers bound to the index and the NAS.

Services: Verification (C-ECHO); Patient Root and Study Root Query/Retrieve, FIND, MOVE and GET
(PS3.4 C.6.1, C.6.2); for C-GET, the storage SOP classes in the SCU role. Associations from callers
that `Peers.allowed` refuses are rejected with "calling AE title not recognized" (PS3.8 9.3.4), those
over `MaxAssociations` with "local limit exceeded"; an association idle for `IDLE_TIMEOUT` seconds, or a
peer that leaves a message unanswered for `DIMSE_TIMEOUT` seconds, is aborted.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from ..catalog import Catalog
from ..config import DicomServer
from ..errors import NasError, NotFound
from .audit import RetrievalAudit
from .peers import Peers
from .pynetdicom_internals import encode_command_sets_once
from .query import QueryError, answer, failure, parse, rows
from .retrieve import CANCELLED, PENDING, Cancels, Retriever, answering_failures, no_delay

log = logging.getLogger("orthanc_nas")

ACSE_TIMEOUT = 30  # seconds for association requests and releases
DIMSE_TIMEOUT = 60  # seconds a peer may take to answer a message (a C-STORE response during a move)
IDLE_TIMEOUT = 120  # seconds without any message before an association is aborted
CONNECT_TIMEOUT = 10  # seconds to reach a C-MOVE destination
PATIENT_ROOT = {PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
                PatientRootQueryRetrieveInformationModelGet}
#: for C-GET, the first of these that the caller offers is taken (pynetdicom follows the acceptor's order):
#: Explicit VR Little Endian first, what most files on a NAS are and what any other uncompressed file
#: converts to without loss
GET_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, *(uid for uid in ALL_TRANSFER_SYNTAXES if uid != ExplicitVRLittleEndian)]
_QR = [PatientRootQueryRetrieveInformationModelFind, PatientRootQueryRetrieveInformationModelMove,
       PatientRootQueryRetrieveInformationModelGet, StudyRootQueryRetrieveInformationModelFind,
       StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet]


def _patient_root(event) -> bool:
    return event.request.AffectedSOPClassUID in PATIENT_ROOT


class DicomNode:
    """The NAS as a DICOM query/retrieve SCP. `start()` listens (False if it cannot), `stop()` ends it all."""

    def __init__(self, settings: DicomServer, catalog: Catalog, source: Callable, peers: Peers,
                 audit: RetrievalAudit):
        self.settings = settings
        self.catalog = catalog
        self.peers = peers
        self.audit = audit
        self._stop = threading.Event()
        self.cancels = Cancels()
        self.retriever = Retriever(catalog, source, peers, audit, self._stop, self.cancels)
        self.server = None

    @property
    def port(self) -> int | None:
        return self.server.server_address[1] if self.server is not None else None

    def _ae(self) -> AE:
        ae = AE(ae_title=self.settings.AET)
        ae.maximum_associations = self.settings.MaxAssociations
        ae.acse_timeout = ACSE_TIMEOUT
        ae.dimse_timeout = DIMSE_TIMEOUT
        ae.network_timeout = IDLE_TIMEOUT
        ae.connection_timeout = CONNECT_TIMEOUT
        ae.require_called_aet = True
        ae.add_supported_context(Verification)
        for model in _QR:
            ae.add_supported_context(model)
        for cx in AllStoragePresentationContexts:  # C-GET: the caller stores, the node sends (role selection)
            ae.add_supported_context(cx.abstract_syntax, GET_TRANSFER_SYNTAXES, scp_role=True, scu_role=False)
        return ae

    def start(self) -> bool:
        """Listen on `Host:Port`; False, with the reason in the log, when that is not possible."""
        handlers = [
            (evt.EVT_CONN_OPEN, no_delay),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_FIND, self._on_find),
            (evt.EVT_C_MOVE, self._on_move),
            (evt.EVT_C_GET, self._on_get),
            (evt.EVT_DIMSE_RECV, self.retriever.on_recv),
            (evt.EVT_DIMSE_RECV, self.cancels.on_recv),
        ]
        host, port = self.settings.Host, self.settings.Port
        encode_command_sets_once()
        try:
            self.server = self._ae().start_server((host, port), block=False, evt_handlers=handlers)
        except OSError as exc:
            log.error("the DICOM node cannot listen on %s:%d (%s); set Nas.DicomServer.Port to a free port. "
                      "Everything else of the plugin works.", host, port, exc.strerror or exc)
            return False
        log.info("DICOM node %s listening on %s:%d", self.settings.AET, host, self.port)
        return True

    def stop(self) -> None:
        """Stop listening and abort the associations in progress (their retrievals end at once)."""
        self._stop.set()
        server, self.server = self.server, None
        if server is None:
            return
        associations = list(server.active_associations)
        server.shutdown()
        for assoc in associations:
            assoc.abort()

    # -- handlers --------------------------------------------------------------------
    def _on_requested(self, event) -> None:
        """EVT_REQUESTED: reject callers that are not allowed, before negotiation."""
        primitive = event.assoc.requestor.primitive
        aet = primitive.calling_ae_title
        aet = (aet.decode("ascii", "replace") if isinstance(aet, bytes) else str(aet)).strip()
        address = event.assoc.requestor.address
        if not self.peers.allowed(aet, address):
            log.warning("DICOM node: association from %s at %s rejected: not an allowed caller (add it to "
                        "Orthanc's DicomModalities or to Nas.DicomServer.AllowedCallers)", aet, address)
            event.assoc.acse.send_reject(0x01, 0x01, 0x03)  # rejected permanent, service user, calling AE
            event.assoc.kill()  # as pynetdicom does after its own rejections: the reject is sent before closing

    def _on_find(self, event):
        """EVT_C_FIND (PS3.4 C.4.1.3): pending answers, then success; cancel honoured between answers."""
        try:
            query = parse(event.identifier, patient_root=_patient_root(event))
        except QueryError as exc:
            log.warning("DICOM node: C-FIND from %s refused: %s", event.assoc.requestor.ae_title, exc)
            yield exc.status, None
            return
        try:
            try:
                conn = self.catalog.reader()
            except NotFound:  # no index yet: nothing matches
                return
            for row in rows(conn, query):
                if self.cancels.cancelled(event):
                    yield CANCELLED, None
                    return
                yield PENDING, answer(query, row, self.settings.AET)
        except NasError as exc:  # e.g. the index's database is down: A700 with what to do (PS3.4 C.4.1.1.4)
            log.warning("DICOM node: C-FIND from %s failed: %s %s", event.assoc.requestor.ae_title, exc.message,
                        exc.hint)
            yield failure(exc), None

    def _on_move(self, event):
        return answering_failures(event, self.retriever.on_move(event, _patient_root(event)))

    def _on_get(self, event):
        return answering_failures(event, self.retriever.on_get(event, _patient_root(event)))
