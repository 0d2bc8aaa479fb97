"""The node's limits on real sockets, without Orthanc: MaxAssociations, idle peers, a destination that
never answers. The peers are pynetdicom AEs in this process."""

import threading
import time

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from tests.support.dicom import write_series
from tests.support.ports import free_port

from orthanc_nas.catalog import Catalog
from orthanc_nas.config import parse_dicom_server
from orthanc_nas.dicom import DicomNode, Peers, RetrievalAudit
from orthanc_nas.dicom import server as server_mod
from orthanc_nas.errors import Internal
from orthanc_nas.indexer import Indexer
from orthanc_nas.sources.local import LocalSource
from orthanc_nas.status import IndexStatus
from orthanc_nas.store import DatabaseUnavailable


@pytest.fixture
def make_node(tmp_path):
    nodes = []

    def make(files=0, **raw):
        root, data = tmp_path / "nas", str(tmp_path / "data")
        root.mkdir(exist_ok=True)
        if files:
            write_series(root / "s", files, PatientID="P1")
        source = LocalSource(str(root))
        catalog = Catalog(data)
        Indexer(catalog, IndexStatus(data), lambda: source, workers=2, parse_processes=0).run()
        settings = parse_dicom_server({"Enabled": True, "Port": 0, "AllowedCallers": "*", **raw}, "127.0.0.1")
        node = DicomNode(settings, catalog, lambda: source, Peers(settings), RetrievalAudit(data))
        assert node.start()
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


def client(*contexts) -> AE:
    ae = AE(ae_title="WS1")
    for cx in contexts or (Verification,):
        ae.add_requested_context(cx)
    return ae


def test_associations_over_the_limit_are_rejected(make_node):
    node = make_node(MaxAssociations=1)
    first = client().associate("127.0.0.1", node.port, ae_title="NAS")
    assert first.is_established
    try:
        second = client().associate("127.0.0.1", node.port, ae_title="NAS")
        assert second.is_rejected  # local limit exceeded (PS3.8 9.3.4)
    finally:
        first.release()
    third = client().associate("127.0.0.1", node.port, ae_title="NAS")
    assert third.is_established
    third.release()


def test_an_idle_association_is_aborted(make_node, monkeypatch):
    monkeypatch.setattr(server_mod, "IDLE_TIMEOUT", 1)
    node = make_node()
    aborted = threading.Event()
    assoc = client().associate("127.0.0.1", node.port, ae_title="NAS",
                               evt_handlers=[(evt.EVT_ABORTED, lambda e: aborted.set()),
                                             (evt.EVT_CONN_CLOSE, lambda e: aborted.set())])
    assert assoc.is_established
    assert aborted.wait(60), "the node kept an idle association open"
    deadline = time.monotonic() + 30
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established


def test_a_destination_that_never_answers_ends_the_move(make_node, monkeypatch):
    """A peer that accepts the files' association but leaves a C-STORE unanswered: the move ends with
    failures after the DIMSE time-out, never a hang."""
    monkeypatch.setattr(server_mod, "DIMSE_TIMEOUT", 1)
    release = threading.Event()
    stuck = AE(ae_title="STUCK")
    stuck.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    port = free_port()
    stuck_server = stuck.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_C_STORE, lambda e: (release.wait(30), 0x0000)[1])])
    try:
        node = make_node(files=5, Destinations={"STUCK": ["127.0.0.1", port]})
        assoc = client(StudyRootQueryRetrieveInformationModelMove).associate("127.0.0.1", node.port, ae_title="NAS")
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = node.catalog.reader().execute(
            "SELECT StudyInstanceUID FROM series").fetchone()[0]
        started = time.monotonic()
        statuses = [status.Status for status, _ in assoc.send_c_move(identifier, "STUCK",
                                                                    StudyRootQueryRetrieveInformationModelMove)]
        assoc.release()
        assert statuses[-1] != 0x0000 and time.monotonic() - started < 60
        audit = node.audit.latest()[0]
        assert audit["sent"] == 0 and audit["failed"] == 5 and audit["outcome"] in ("failed", "done_with_failures")
    finally:
        release.set()
        stuck_server.shutdown()


def test_a_cancel_counts_for_the_request_it_follows_only(make_node):
    """A C-CANCEL sent right after its C-FIND stops the answers (pynetdicom alone drops one that comes before
    its service starts); one sent before a request with the same Message ID does not cancel that request."""
    node = make_node(files=30)
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.SeriesInstanceUID = node.catalog.reader().execute("SELECT SeriesInstanceUID FROM series").fetchone()[0]
    identifier.SOPInstanceUID = ""
    assoc = client(StudyRootQueryRetrieveInformationModelFind).associate("127.0.0.1", node.port, ae_title="NAS")
    try:
        assoc.send_c_cancel(5, query_model=StudyRootQueryRetrieveInformationModelFind)  # nothing to cancel yet
        time.sleep(0.2)
        whole = [s.Status for s, _ in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind, 5)]
        answers = assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind, 6)
        assoc.send_c_cancel(6, query_model=StudyRootQueryRetrieveInformationModelFind)
        cancelled = [s.Status for s, _ in answers]
    finally:
        assoc.release()
    assert whole == [0xFF00] * 30 + [0x0000]
    assert cancelled[-1] == 0xFE00 and cancelled.count(0xFF00) < 30


class StoreSCP:
    """A storage SCP in this process: keeps each C-STORE's data set as it came over the wire."""

    def __init__(self, per_file: float = 0.0):
        self.received: dict[str, bytes] = {}
        self.per_file = per_file
        self.port = free_port()
        ae = AE(ae_title="WS1")
        ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self.on_store)])

    def on_store(self, event):
        time.sleep(self.per_file)
        self.received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000


def move_responses(node) -> list[Dataset]:
    """The C-MOVE responses (status datasets) a caller receives for the node's only study."""
    assoc = client(StudyRootQueryRetrieveInformationModelMove).associate("127.0.0.1", node.port, ae_title="NAS")
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = node.catalog.reader().execute("SELECT StudyInstanceUID FROM series").fetchone()[0]
    responses = [status for status, _ in assoc.send_c_move(identifier, "WS1", StudyRootQueryRetrieveInformationModelMove)]
    assoc.release()
    return responses


@pytest.mark.parametrize("every, pendings", [(3600.0, 0), (0.0, 12)])
def test_a_move_sends_pending_responses_at_most_every_pending_every(make_node, tmp_path, monkeypatch, every,
                                                                   pendings):
    """PS3.4 C.4.2.3.1: pending responses are optional; the final one has the counts. pynetdicom alone sends
    one after every file; the node at most one a `PENDING_EVERY` seconds (each with the counts then). The
    files arrive as stored: the data set bytes the peer receives are the file's after its meta group."""
    from orthanc_nas.dicom import pynetdicom_internals
    monkeypatch.setattr(pynetdicom_internals, "PENDING_EVERY", every)
    scp = StoreSCP()
    try:
        node = make_node(files=12, Destinations={"WS1": ["127.0.0.1", scp.port]})
        responses = move_responses(node)
    finally:
        scp.server.shutdown()
    pending = [r for r in responses if r.Status == 0xFF00]
    assert len(pending) == pendings
    for done, r in enumerate(pending, 1):
        assert (r.NumberOfCompletedSuboperations, r.NumberOfRemainingSuboperations) == (done, 12 - done)
    final = responses[-1]
    assert len(responses) == pendings + 1 and final.Status == 0x0000
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (12, 0)
    assert len(scp.received) == 12
    for path in (tmp_path / "nas" / "s").iterdir():
        data = path.read_bytes()
        start = 144 + int.from_bytes(data[140:144], "little")  # after the File Meta Information group
        assert scp.received[str(dcmread(path).SOPInstanceUID)] == data[start:]


def test_a_slow_move_still_tells_its_progress(make_node):
    """With the default `PENDING_EVERY` (0.5 s), a move of 12 files at 0.1 s each gives one pending response
    about every half second, each with counts that add up, then the final one."""
    from orthanc_nas.dicom import pynetdicom_internals
    scp = StoreSCP(per_file=0.1)
    try:
        node = make_node(files=12, Destinations={"WS1": ["127.0.0.1", scp.port]})
        started = time.monotonic()
        responses = move_responses(node)
        elapsed = time.monotonic() - started
    finally:
        scp.server.shutdown()
    pending = [r for r in responses if r.Status == 0xFF00]
    assert 1 <= len(pending) <= elapsed / pynetdicom_internals.PENDING_EVERY + 1
    for r in pending:
        assert r.NumberOfCompletedSuboperations + r.NumberOfRemainingSuboperations == 12
    assert responses[-1].Status == 0x0000 and responses[-1].NumberOfCompletedSuboperations == 12


def test_a_get_sends_pending_responses_at_most_every_pending_every(make_node, monkeypatch):
    """PS3.4 C.4.3.3.1: the same for C-GET, whose C-STOREs come back over the caller's association."""
    from pynetdicom import build_role
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    from orthanc_nas.dicom import pynetdicom_internals
    monkeypatch.setattr(pynetdicom_internals, "PENDING_EVERY", 3600.0)
    node = make_node(files=12)
    received = []
    ae = client(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="NAS", ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, lambda e: (received.append(e.request.AffectedSOPInstanceUID),
                                                                    0x0000)[1])])
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = node.catalog.reader().execute("SELECT StudyInstanceUID FROM series").fetchone()[0]
    responses = [status for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)]
    assoc.release()
    assert [r.Status for r in responses] == [0x0000]
    assert responses[0].NumberOfCompletedSuboperations == 12 and len(set(received)) == 12


@pytest.mark.parametrize("error, find_status, retrieve_status, comment", [
    (DatabaseUnavailable("the NAS index's database cannot be reached (couldn't get a connection after 5.00 sec)"),
     0xA700, 0xA701, "the NAS index's database cannot be reached: try again later"),
    (Internal("the index is not readable: disk I/O error on a very long path " + "x" * 80),  # the message, cut
     0xC000, 0xC000, "the index is not readable: disk I/O error on a very long path xx"),
])
def test_an_index_that_cannot_be_read_is_answered_with_the_error_s_status_and_comment(
        make_node, monkeypatch, error, find_status, retrieve_status, comment):
    """PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4: the domain error's DICOM status (a database down: "Refused: Out of
    Resources") and an Error Comment of at most 64 characters, on C-FIND, C-MOVE and C-GET alike; the
    association goes on (C-ECHO) and is released; nothing is sent; the audit says why."""
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

    node = make_node(files=2, Destinations={"WS1": ["127.0.0.1", free_port()]})
    study = node.catalog.reader().execute("SELECT StudyInstanceUID FROM series").fetchone()[0]

    def unreadable():
        raise error

    monkeypatch.setattr(node.catalog, "reader", unreadable)
    models = (StudyRootQueryRetrieveInformationModelFind, StudyRootQueryRetrieveInformationModelMove,
              StudyRootQueryRetrieveInformationModelGet, Verification)
    assoc = client(*models).associate("127.0.0.1", node.port, ae_title="NAS")
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study
    found = [s for s, _ in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind)]
    moved = [s for s, _ in assoc.send_c_move(identifier, "WS1", StudyRootQueryRetrieveInformationModelMove)]
    got = [s for s, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)]
    assert [(r.Status, r.ErrorComment.rstrip()) for r in found] == [(find_status, comment)]
    assert [(r.Status, r.ErrorComment.rstrip()) for r in moved + got] == [(retrieve_status, comment)] * 2
    assert assoc.send_c_echo().Status == 0x0000
    assoc.release()
    audit = node.audit.latest()
    assert [(r["operation"], r["outcome"], r["sent"], r["detail"]) for r in audit] == [
        ("C-GET", "failed", 0, error.message), ("C-MOVE", "failed", 0, error.message)]
