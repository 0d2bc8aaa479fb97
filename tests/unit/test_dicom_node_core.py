"""The DICOM node's core without a network: settings, callers, the SQL of queries."""

import pytest
from pydicom.dataset import Dataset
from tests.support.series import record, write

from orthanc_nas import store_dialects
from orthanc_nas.catalog import Catalog
from orthanc_nas.config import parse_settings
from orthanc_nas.dicom.peers import Peer, Peers
from orthanc_nas.dicom.query import QueryError, parse, prepare, rows, sql, time_value
from orthanc_nas.errors import ConfigError


def dicom_server(**raw):
    return parse_settings({"DicomServer": raw}).DicomServer


def test_settings_default_and_validated():
    s = dicom_server()
    assert (s.Enabled, s.AET, s.Port, s.Host, s.AllowedCallers, s.MaxAssociations, s.RegisterInOrthanc) == \
        (False, "NAS", 4243, "127.0.0.1", None, 8, True)
    assert parse_settings({"DicomServer": {}}, {"RemoteAccessAllowed": True}).DicomServer.Host == "0.0.0.0"
    s = dicom_server(Enabled=True, AllowedCallers=[{"AET": "WS1", "Host": "10.0.0.5"}, {"AET": "ANY"}],
                     Destinations={"PACS": ["pacs.local", 104]})
    assert s.AllowedCallers == [{"AET": "WS1", "Host": "10.0.0.5"}, {"AET": "ANY"}]
    assert s.Destinations == {"PACS": ["pacs.local", 104]}


@pytest.mark.parametrize("raw, field", [
    ({"Enabled": "yes"}, "Nas.DicomServer.Enabled"),
    ({"AET": "A" * 17}, "Nas.DicomServer.AET"),
    ({"AET": "A\\B"}, "Nas.DicomServer.AET"),
    ({"Port": 70000}, "Nas.DicomServer.Port"),
    ({"AllowedCallers": "everyone"}, "Nas.DicomServer.AllowedCallers"),
    ({"AllowedCallers": [{"Host": "x"}]}, "Nas.DicomServer.AllowedCallers[0].AET"),
    ({"AllowedCallers": [{"AET": "X", "Port": 1}]}, "Nas.DicomServer.AllowedCallers[0].Port"),
    ({"Destinations": {"PACS": ["host"]}}, "Nas.DicomServer.Destinations.PACS"),
    ({"MaxAssociations": 0}, "Nas.DicomServer.MaxAssociations"),
    ({"Colour": 1}, "Nas.DicomServer.Colour"),
])
def test_bad_settings_name_the_key(raw, field):
    with pytest.raises(ConfigError) as err:
        dicom_server(**raw)
    assert err.value.field == field


def test_callers_default_to_orthancs_modalities_read_at_each_call():
    modalities = [Peer("WS1", "127.0.0.1", 104)]
    peers = Peers(dicom_server(), lambda: modalities, Peer("ORTHANC", "127.0.0.1", 4242))
    assert peers.allowed("WS1", "127.0.0.1") and peers.allowed("WS1 ", "::ffff:127.0.0.1")
    assert not peers.allowed("WS1", "192.0.2.7")  # the right AE title from another host
    assert not peers.allowed("WS2", "127.0.0.1")
    modalities.append(Peer("WS2", "127.0.0.1", 105))
    assert peers.allowed("WS2", "127.0.0.1")
    assert peers.allowed("ORTHANC", "127.0.0.1") and not peers.allowed("ORTHANC", "192.0.2.7")
    assert peers.destination("WS2") == Peer("WS2", "127.0.0.1", 105)
    assert peers.destination("ORTHANC").port == 4242 and peers.destination("NOWHERE") is None


def test_allowed_callers_replace_the_modalities():
    peers = Peers(dicom_server(AllowedCallers=[{"AET": "WS9"}], Destinations={"PACS": ["192.0.2.1", 104]}),
                  lambda: [Peer("WS1", "127.0.0.1", 104)])
    assert peers.allowed("WS9", "198.51.100.1") and not peers.allowed("WS1", "127.0.0.1")
    assert peers.destination("PACS") == Peer("PACS", "192.0.2.1", 104)
    assert Peers(dicom_server(AllowedCallers="*")).allowed("ANYONE", "203.0.113.9")


def test_times_compare_as_text():
    assert time_value("1015") == time_value("101500") == time_value("10:15:00") == "101500.000000"
    assert time_value("093015.25") == "093015.250000" and time_value("") is None


def identifier(level, **keys):
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def test_refused_identifiers():
    with pytest.raises(QueryError):
        parse(identifier("PATIENT", PatientID="1"), patient_root=False)
    with pytest.raises(QueryError):
        parse(identifier("FRAME"), patient_root=True)
    with pytest.raises(QueryError):  # an IMAGE level query of every file
        parse(identifier("IMAGE", PatientID="1", SOPInstanceUID=""), patient_root=True)


@pytest.fixture
def catalog(tmp_path, db_engine):
    cat = Catalog(str(tmp_path))
    files = [(f"s{s}/{i}", record(PatientID=f"P{s % 3}", PatientName="DOE^JOHN", StudyInstanceUID=f"1.{s % 5}",
                                  SeriesInstanceUID=f"2.{s}", SOPInstanceUID=f"3.{s}.{i}", InstanceNumber=i,
                                  Modality="CT", StudyDate="20240101"))
             for s in range(30) for i in range(20)]
    write(cat, files)
    return cat


@pytest.mark.parametrize("level, keys", [
    ("IMAGE", {"SeriesInstanceUID": "2.4"}),
    ("IMAGE", {"SOPInstanceUID": "3.4.2"}),
    ("IMAGE", {"StudyInstanceUID": "1.2", "SeriesInstanceUID": "2.7"}),
    ("SERIES", {"StudyInstanceUID": "1.2"}),
    ("STUDY", {"PatientID": "P1"}),
    ("STUDY", {"StudyInstanceUID": "1.3"}),
    ("STUDY", {"StudyDate": "20240101-20240131", "ModalitiesInStudy": "CT"}),
])
def test_queries_use_the_indexes_never_a_scan_of_files(catalog, level, keys):
    conn = prepare(catalog.reader())
    query = parse(identifier(level, **keys), patient_root=True)
    text, args = sql(query, store_dialects.dialect(conn))
    if store_dialects.dialect(conn) is store_dialects.SQLITE_DIALECT:
        plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + text, args))
        assert "SCAN f" not in plan and "SCAN files" not in plan, plan
        assert "USING INDEX" in plan or "USING COVERING INDEX" in plan, plan
    else:  # on a table this small PostgreSQL would rightly read every row: sequential scans discouraged,
        # an index must serve the query
        conn.execute("BEGIN")
        try:
            conn.execute("SET LOCAL enable_seqscan = off")
            plan = " | ".join(r[0] for r in conn.execute("EXPLAIN " + text, args))
        finally:
            conn.execute("ROLLBACK")
        assert "Seq Scan on files" not in plan and "Seq Scan on series" not in plan, plan
        assert "Index" in plan, plan
    assert list(rows(conn, query))


def test_a_date_range_with_modalities_in_study_starts_from_the_dates(catalog):
    """Not from every series of the modality (SQLite's plan of an `IN (SELECT …)`: docs/performance.md)."""
    conn = prepare(catalog.reader())
    if store_dialects.dialect(conn) is not store_dialects.SQLITE_DIALECT:
        pytest.skip("PostgreSQL plans from its statistics (EXPLAIN ANALYZE figures in docs/performance.md)")
    query = parse(identifier("STUDY", StudyDate="20240101-20240131", ModalitiesInStudy="CT"), patient_root=False)
    plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql(query)[0], sql(query)[1])]
    assert any("series_by_date (StudyDate>? AND StudyDate<?)" in step for step in plan), plan
    assert not any("series_by_modality" in step for step in plan), plan
    assert len(list(rows(conn, query))) == 5


def test_the_pynetdicom_internals_the_node_relies_on_are_still_there():
    """`pynetdicom_internals.sender_only`: the reactor is the only non-blocking reader of the DIMSE queue."""
    import inspect

    from pynetdicom.association import Association
    from pynetdicom.dimse import DIMSEServiceProvider

    reactor = inspect.getsource(Association._run_reactor)
    assert "self.dimse.get_msg(block=False)" in reactor
    assert "self.dimse.get_msg(block=True)" in inspect.getsource(Association.send_c_store)
    assert list(inspect.signature(DIMSEServiceProvider.get_msg).parameters) == ["self", "block"]
    everything = inspect.getsource(__import__("pynetdicom.association", fromlist=["x"]))
    assert everything.count("get_msg(block=False)") == 1
    # `pynetdicom_internals.prompt`: the DUL reactor sleeps `_run_loop_delay` when idle
    from pynetdicom.dul import DULServiceProvider
    assert "time.sleep(self._run_loop_delay)" in inspect.getsource(DULServiceProvider.run_reactor)
    # `fewer_pendings`: the C-MOVE/C-GET SCPs send every response through the association's `dimse.send_msg`
    from pynetdicom.service_class import QueryRetrieveServiceClass
    for scp in (QueryRetrieveServiceClass._move_scp, QueryRetrieveServiceClass._get_scp):
        assert "self.dimse.send_msg(rsp, cx_id)" in inspect.getsource(scp)
    assert list(inspect.signature(DIMSEServiceProvider.send_msg).parameters) == ["self", "primitive", "context_id"]
    # `failure_response`: an exception before the first sub-operation is answered 0xCxxx through `attempt`,
    # which sends the response primitive through `dimse.send_msg` (and C_MOVE/C_GET carry an ErrorComment)
    from pynetdicom.dimse_primitives import C_GET, C_MOVE
    from pynetdicom.service_class import attempt
    assert "self._dimse.send_msg(self._rsp, self._cx_id)" in inspect.getsource(attempt)
    assert "ctx.error_status = 0xC514" in inspect.getsource(QueryRetrieveServiceClass._move_scp)
    assert "ctx.error_status = 0xC413" in inspect.getsource(QueryRetrieveServiceClass._get_scp)
    assert "ErrorComment" in C_MOVE.STATUS_OPTIONAL_KEYWORDS and "ErrorComment" in C_GET.STATUS_OPTIONAL_KEYWORDS
    # `encode_command_sets_once`: the group length, then the whole command set, through the module's `encode`
    from pynetdicom import dimse_messages

    from orthanc_nas.dicom import pynetdicom_internals as internals
    assert internals._encode is __import__("pynetdicom.dsutils", fromlist=["x"]).encode
    group_length = inspect.getsource(internals._group_length)
    assert "del self.command_set.CommandGroupLength" in group_length
    assert "encode(self.command_set, True, True)" in group_length
    assert inspect.getsource(dimse_messages.DIMSEMessage.encode_msg).count("encode(self.command_set, True, True)") == 1
    assert inspect.getsource(dimse_messages.DIMSEMessage.primitive_to_message).rstrip().endswith(
        "self._set_command_group_length()")
    # `quiet`: the standard logging handlers pynetdicom binds to each association
    from pynetdicom import _handlers
    binds = inspect.getsource(Association._bind_defaults)
    for name in ("standard_dimse_recv_handler", "standard_dimse_sent_handler", "standard_pdu_recv_handler",
                 "standard_pdu_sent_handler"):
        assert name in binds and callable(getattr(_handlers, name))


def test_command_sets_encoded_once_are_the_same_bytes():
    """Every kind of message the node sends, encoded by pynetdicom alone and with `encode_command_sets_once`."""
    import io

    from pynetdicom.dimse_messages import C_MOVE_RSP, C_STORE_RQ
    from pynetdicom.dimse_primitives import C_MOVE, C_STORE

    from orthanc_nas.dicom import pynetdicom_internals as internals

    store = C_STORE()
    store.MessageID, store.Priority, store.MoveOriginatorMessageID = 7, 2, 3
    store.AffectedSOPClassUID, store.AffectedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
    store.MoveOriginatorApplicationEntityTitle = "NAS"
    store.DataSet = io.BytesIO(b"\x08\x00\x16\x00" + b"x" * 40000)
    move = C_MOVE()
    move.MessageIDBeingRespondedTo, move.AffectedSOPClassUID, move.Status = 9, "1.2.840.10008.5.1.4.1.2.2.2", 0xB000
    move.NumberOfCompletedSuboperations, move.NumberOfFailedSuboperations = 3, 1
    move.NumberOfWarningSuboperations = 0
    move.Identifier = io.BytesIO(b"\x08\x00\x58\x00\x06\x00\x00\x001.2.3\x00")

    def wire(message_class, primitive) -> list:
        message = message_class()
        message.primitive_to_message(primitive)
        return [p.presentation_data_value_list for p in message.encode_msg(1, 16384)]

    try:
        internals.encode_command_sets_once(False)
        as_is = [wire(C_STORE_RQ, store), wire(C_MOVE_RSP, move)]
        internals.encode_command_sets_once()
        assert [wire(C_STORE_RQ, store), wire(C_MOVE_RSP, move)] == as_is
        calls = []
        internals._encode, before = (lambda *a: calls.append(a) or before(*a)), internals._encode
        try:
            wire(C_STORE_RQ, store)
        finally:
            internals._encode = before
        assert len(calls) == 1  # pynetdicom alone: twice
    finally:
        internals.encode_command_sets_once()


def test_the_reader_keeps_its_order_and_bounds_what_it_holds(tmp_path, monkeypatch):
    import threading as th

    from orthanc_nas.dicom import retrieve
    from orthanc_nas.dicom.retrieve import Instance, NasReader

    items = [Instance(f"f{i}", size, f"1.{i}", None, None) for i, size in enumerate([10, 10, 10, 10, 10, 900, 10])]
    reading, most = set(), [0]
    lock = th.Lock()

    class Reader(NasReader):
        def _read(self, item):
            with lock:
                reading.add(item.path)
                most[0] = max(most[0], sum(i.size for i in items if i.path in reading))
            import time
            time.sleep(0.01)
            with lock:
                reading.discard(item.path)
            return item.path

    monkeypatch.setattr(retrieve, "BYTES_IN_FLIGHT", 1000)
    got = [outcome[0] for _, *outcome in Reader(None, items, th.Event(), in_flight=3)]
    assert got == [i.path for i in items]
    assert most[0] <= 1000


def test_orthanc_without_its_dicom_server_may_call_but_receives_nothing():
    peers = Peers(dicom_server(), lambda: [], Peer("ORTHANC", "127.0.0.1", None))
    assert peers.allowed("ORTHANC", "127.0.0.1") and peers.destination("ORTHANC") is None
