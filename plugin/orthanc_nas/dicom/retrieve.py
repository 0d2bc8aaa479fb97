"""C-MOVE and C-GET: the selected files read from the NAS and sent by pynetdicom's C-STORE sub-operations.

A handler first selects the files (`select`: the identifier's keys at its level, PS3.4 C.4.2.2.1), then
yields what pynetdicom asks for (C-MOVE: the destination, with presentation contexts for the SOP classes
and stored transfer syntaxes of the files, PS3.4 C.4.2.3.1; then the count; then one dataset per
sub-operation; pynetdicom's pending responses go at most every 0.5 s, `fewer_pendings`, PS3.4
C.4.2.3.1). Files are read `IN_FLIGHT` ahead of the one being sent, with the indexer's retries, each
within `READ_WITHIN` seconds. A file is sent as stored when the peer accepted its transfer syntax;
pynetdicom converts between uncompressed ones (implicit/explicit VR, byte order), which is lossless;
otherwise the sub-operation fails and its reason goes to the log and the audit. A file the NAS does not
give is a failed sub-operation; `NAS_GONE_AFTER` such network failures in a row end the retrieval at once
with the rest counted as failed (status A702), so a NAS that stops answering never hangs a peer.
Sub-operations that succeeded are counted from the peer's C-STORE responses (`Stores`), not from what
was handed to pynetdicom.
"""

from __future__ import annotations

import collections
import io
import logging
import socket
import threading
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, replace

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import StoragePresentationContexts, build_context, evt
from pynetdicom.dimse_messages import C_CANCEL_RQ, C_FIND_RQ, C_GET_RQ, C_MOVE_RQ, C_STORE_RSP

from ..errors import NasError, NasNetworkError
from ..indexer import with_retries
from ..pathnames import loaded
from .audit import Retrieval, RetrievalAudit
from .pynetdicom_internals import failure_response, fewer_pendings, prompt, quiet, sender_only
from .query import IMAGE, UNIQUE_KEYS, QueryError, failure, parse, rows

log = logging.getLogger("orthanc_nas")

IN_FLIGHT = 4  # files read from the NAS while one is sent
BYTES_IN_FLIGHT = 256 * 1024 * 1024  # ... as long as they hold less than this (a large multi-frame file: alone)
READ_WITHIN = 30.0  # seconds one file may take, retries included
NAS_GONE_AFTER = 3  # files in a row the NAS did not give for network reasons: the rest fail at once
MAX_CONTEXTS = 128  # PS3.8 9.3.2.2: presentation context IDs are odd numbers 1..255
PENDING, CANCELLED, OUT_OF_RESOURCES = 0xFF00, 0xFE00, 0xA702
_UNCOMPRESSED = {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian}


@dataclass(frozen=True, slots=True)
class Instance:
    """One file to send, as the index knows it."""

    path: str
    size: int
    sop_instance: str
    sop_class: str | None
    transfer_syntax: str | None


def select(conn, identifier: Dataset, *, patient_root: bool) -> tuple[str, dict, list[Instance]]:
    """(level, keys, files) of a C-MOVE/C-GET identifier; `QueryError` without the level's unique key."""
    query = parse(identifier, patient_root=patient_root, retrieve=True)
    unique = UNIQUE_KEYS[query.level]
    if unique not in query.keys:
        raise QueryError(f"a {query.level} level retrieval needs {unique}")
    level, keys = query.level, dict(query.keys)
    files = [Instance(loaded(r["path"]), r["size"], r["SOPInstanceUID"], r["SOPClassUID"], r["TransferSyntaxUID"])
             for r in rows(conn, replace(query, level=IMAGE))]
    return level, keys, files


def contexts_for(files: list[Instance]) -> list:
    """Presentation contexts to propose to a C-MOVE destination (PS3.8 9.3.2.2): per SOP class, one per
    stored transfer syntax, so the peer can accept each one on its own, and one offering Explicit and
    Implicit VR Little Endian, for files it takes only converted. At most `MAX_CONTEXTS`."""
    stored: dict[str, list[str]] = {}
    for f in files:
        if f.sop_class:
            syntaxes = stored.setdefault(f.sop_class, [])
            if f.transfer_syntax and f.transfer_syntax not in syntaxes:
                syntaxes.append(f.transfer_syntax)
    contexts = []
    for sop_class, syntaxes in stored.items():
        contexts.extend(build_context(sop_class, [uid]) for uid in syntaxes)
        contexts.append(build_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
    if any(not f.sop_class for f in files):  # rows an older version indexed, not yet completed by a run
        contexts += [cx for cx in StoragePresentationContexts if cx.abstract_syntax not in stored]
    return contexts[:MAX_CONTEXTS]


def unsendable(accepted: list, ds: Dataset) -> str | None:
    """Why no accepted presentation context can carry `ds`, or None (PS3.4 B.2: as stored, or converted
    between uncompressed transfer syntaxes). A file without SOP Class UID (0008,0016) cannot be sent: a
    C-STORE names its SOP class, and the node does not add one the file does not have."""
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if not sop_class:
        return "the file has no SOP Class UID (0008,0016): no C-STORE can carry it"
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    offered = [cx.transfer_syntax[0] for cx in accepted if cx.abstract_syntax == sop_class and cx.transfer_syntax]
    if not offered:
        return f"the destination accepted no presentation context for {UID(sop_class).name}"
    if syntax in offered or (syntax in _UNCOMPRESSED and any(s in _UNCOMPRESSED for s in offered)):
        return None
    return (f"the destination does not accept {syntax.name}, and the file cannot be converted to what it "
            f"accepts ({', '.join(UID(s).name for s in offered)}) without loss")


def _placeholder(item: Instance) -> Dataset:
    """What is handed to pynetdicom for a file that cannot be sent: it fails the sub-operation and names
    the instance in the Failed SOP Instance UID List."""
    ds = Dataset()
    ds.SOPInstanceUID = item.sop_instance
    return ds


class NasReader:
    """Reads the files of one retrieval from the NAS, `in_flight` at a time ahead of the sender.

    Yields `(Instance, Dataset)` or `(Instance, reason, network)` in the order of `files`.
    """

    def __init__(self, source, files: list[Instance], stop: threading.Event, in_flight: int = IN_FLIGHT,
                 within: float = READ_WITHIN):
        self.source = source
        self.files = files
        self.stop = stop
        self.in_flight = max(1, in_flight)
        self.within = within

    def _bytes(self, item: Instance) -> bytes:
        """The file as stored on the NAS, with the indexer's retries, within `within` seconds."""
        def whole_file() -> bytes:
            fh = self.source.open(item.path)
            try:
                return fh.read()
            finally:
                fh.close()

        return with_retries(whole_file, stop=self.stop, within=self.within)

    def _read(self, item: Instance) -> Dataset:
        ds = dcmread(io.BytesIO(self._bytes(item)), force=True)
        if str(ds.get("SOPInstanceUID", "")) != item.sop_instance:
            raise ValueError("the file changed on the NAS since it was indexed (another SOP Instance UID)")
        meta = getattr(ds, "file_meta", None)
        if meta is None or "TransferSyntaxUID" not in meta:  # a file without meta group: the syntax it has
            ds.file_meta = meta = meta or FileMetaDataset()
            meta.TransferSyntaxUID = UID(item.transfer_syntax or ImplicitVRLittleEndian)
        return ds

    def __iter__(self) -> Iterator[tuple]:
        pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix="nas-dicom-read")
        pending: collections.deque[tuple[Instance, Future]] = collections.deque()
        upcoming = iter(self.files)
        try:
            nxt = next(upcoming, None)
            while nxt is not None or pending:
                # read ahead: up to `in_flight` files and `BYTES_IN_FLIGHT` bytes, at least one file
                while nxt is not None and not self.stop.is_set() and (not pending or (
                        len(pending) < self.in_flight
                        and sum(i.size for i, _ in pending) + nxt.size <= BYTES_IN_FLIGHT)):
                    pending.append((nxt, pool.submit(self._read, nxt)))
                    nxt = next(upcoming, None)
                if not pending:
                    return
                item, future = pending.popleft()
                yield (item, *self._outcome(item, future))
        finally:
            self.stop.set()  # reads not started yet are dropped; one in progress ends at its next retry
            pool.shutdown(wait=False, cancel_futures=True)

    def _outcome(self, item: Instance, future: Future) -> tuple:
        try:
            return (future.result(timeout=self.within + 5),)
        except FutureTimeout:
            return f"the NAS did not give {item.path} within {self.within:g} s", True
        except NasNetworkError as exc:
            return f"{item.path}: {exc.message}", True
        except NasError as exc:
            return f"{item.path}: {exc.message}", False
        except Exception as exc:  # not readable as DICOM (any more), changed meanwhile
            return f"{item.path}: {type(exc).__name__}: {exc}"[:300], False


def no_delay(event) -> None:
    """EVT_CONN_OPEN: send each PDU at once (TCP_NODELAY). With Nagle's algorithm, a C-STORE's data waits for
    the peer's delayed acknowledgement of its command: about 40 ms per file on Linux."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


def answering_failures(event, handler: Iterator):
    """A C-MOVE or C-GET handler whose `NasError` (e.g. the index's database is down) is answered with the
    error's status and comment (`query.failure`: A701 "Out of Resources - Unable to calculate number of
    matches" for a database or NAS that cannot be reached, PS3.4 C.4.2.1.5, C.4.3.1.4), not pynetdicom's
    bare "Unable to process"."""
    try:
        yield from handler
    except NasError as exc:
        failure_response(event.assoc, failure(exc, retrieve=True))
        raise


class Stores:
    """Counts the C-STORE responses of a retrieval's sub-operations (success and warning count as sent)."""

    def __init__(self):
        self.sent = 0
        self.assoc = None  # the C-MOVE's store association, once accepted

    def on_accepted(self, event) -> None:
        sender_only(event.assoc)
        prompt(event.assoc)  # only sends, and ends with the retrieval
        quiet(event.assoc)
        self.assoc = event.assoc

    def on_recv(self, event) -> None:
        if isinstance(event.message, C_STORE_RSP):
            status = event.message.command_set.Status
            if status == 0x0000 or 0xB000 <= status <= 0xBFFF:
                self.sent += 1


class Cancels:
    """The C-CANCEL requests (PS3.7 9.3.2.3) of each association, fed by EVT_DIMSE_RECV in the order messages
    arrive. pynetdicom keeps its own record (`event.is_cancelled`) only once its service class has started:
    it clears it just before, so a C-CANCEL sent right after its C-FIND, C-MOVE or C-GET request was lost and
    every match or file was sent. A new request with the same Message ID forgets an older cancel."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ids: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # association -> Message IDs

    def on_recv(self, event) -> None:
        message = event.message
        if isinstance(message, C_CANCEL_RQ):
            with self._lock:
                self._ids.setdefault(event.assoc, set()).add(message.command_set.MessageIDBeingRespondedTo)
        elif isinstance(message, C_FIND_RQ | C_MOVE_RQ | C_GET_RQ):
            with self._lock:
                self._ids.get(event.assoc, set()).discard(message.command_set.MessageID)

    def cancelled(self, event) -> bool:
        """Whether the request of `event` (EVT_C_FIND, EVT_C_MOVE, EVT_C_GET) was cancelled."""
        if event.is_cancelled:
            return True
        with self._lock:
            return event.request.MessageID in self._ids.get(event.assoc, ())


class Retriever:
    """The C-MOVE and C-GET handlers of the node (bound to pynetdicom's events by `server`)."""

    def __init__(self, catalog, source: Callable, peers, audit: RetrievalAudit, stop: threading.Event,
                 cancels: Cancels | None = None):
        self.catalog = catalog
        self.source = source
        self.peers = peers
        self.audit = audit
        self.stop = stop
        self.cancels = cancels or Cancels()
        self._gets: dict[int, Stores] = {}  # id(association) -> the responses of its C-GET

    def on_recv(self, event) -> None:
        """EVT_DIMSE_RECV of every association: C-STORE responses of a C-GET in progress."""
        stores = self._gets.get(id(event.assoc))
        if stores is not None:
            stores.on_recv(event)

    def on_move(self, event, patient_root: bool):
        """EVT_C_MOVE (PS3.4 C.4.2.3): destination, count, then one dataset per sub-operation."""
        destination = event.move_destination
        destination = (destination.decode("ascii", "replace") if isinstance(destination, bytes)
                       else str(destination)).strip()
        record = self._record(event, "C-MOVE", destination)
        stores = None
        pendings_back = fewer_pendings(event.assoc)
        try:
            peer = self.peers.destination(destination)
            if peer is None:
                record.outcome = "refused"
                record.fail(f"unknown move destination {destination!r}")
                log.warning("DICOM node: C-MOVE from %s to unknown destination %r refused", record.caller_aet,
                            destination)
                self._finish(record, None)
                yield None, None  # A801: move destination unknown
                return
            files = self._select(event, patient_root, record)
            stores = Stores()
            handlers = [(evt.EVT_CONN_OPEN, no_delay), (evt.EVT_ACCEPTED, stores.on_accepted),
                        (evt.EVT_DIMSE_RECV, stores.on_recv)]
            yield peer.host, peer.port, {"contexts": contexts_for(files) or None, "evt_handlers": handlers}
            yield len(files)
            yield from self._send(event, files, record, stores, lambda: stores.assoc)
        finally:
            pendings_back()
            self._finish(record, stores)

    def on_get(self, event, patient_root: bool):
        """EVT_C_GET (PS3.4 C.4.3.3): count, then one dataset per sub-operation on the same association."""
        record = self._record(event, "C-GET", None)
        stores = Stores()
        self._gets[id(event.assoc)] = stores
        idle = prompt(event.assoc)  # C-STORE responses read at once; back to pynetdicom's pace after
        pendings_back = fewer_pendings(event.assoc)
        try:
            record.destination = record.caller_aet
            files = self._select(event, patient_root, record)
            yield len(files)
            yield from self._send(event, files, record, stores, lambda: event.assoc)
        finally:
            pendings_back()
            prompt(event.assoc, idle)
            self._gets.pop(id(event.assoc), None)
            self._finish(record, stores)

    def _record(self, event, operation: str, destination: str | None) -> Retrieval:
        requestor = event.assoc.requestor
        return Retrieval(str(requestor.ae_title).strip(), str(requestor.address), operation, destination,
                         None, {})

    def _select(self, event, patient_root: bool, record: Retrieval) -> list[Instance]:
        try:
            identifier = event.identifier
            level, keys, files = select(self.catalog.reader(), identifier, patient_root=patient_root)
        except QueryError as exc:
            record.outcome = "refused"
            record.fail(str(exc))
            log.warning("DICOM node: %s from %s refused: %s", record.operation, record.caller_aet, exc)
            raise
        except NasError as exc:  # the index cannot be read (its database is down): nothing is sent
            record.fail(exc.message)
            record.keep_back = exc.kind == "database"  # the audit is in the same database
            log.warning("DICOM node: %s from %s failed: %s %s", record.operation, record.caller_aet, exc.message,
                        exc.hint)
            raise
        record.level, record.keys, record.files = level, keys, len(files)
        return files

    def _send(self, event, files: list[Instance], record: Retrieval, stores: Stores,
              store_assoc: Callable) -> Iterator[tuple]:
        stop = threading.Event()
        network_failures = 0
        reader = NasReader(self.source(), files, stop)
        for item, *outcome in reader:
            if self.cancels.cancelled(event) or self.stop.is_set():
                record.outcome = "cancelled"
                self._finish(record, stores)
                yield CANCELLED, None
                return
            record.attempted += 1
            if isinstance(outcome[0], Dataset):
                network_failures = 0
                ds = outcome[0]
                assoc = store_assoc()
                reason = unsendable(assoc.accepted_contexts, ds) if assoc is not None else None
                if reason:
                    record.fail(reason)
                    log.warning("DICOM node: %s of %s to %s: %s", record.operation, item.path,
                                record.destination, reason)
                yield PENDING, ds
                continue
            reason, network = outcome
            record.fail(reason)
            log.warning("DICOM node: %s could not read %s", record.operation, reason)
            network_failures = network_failures + 1 if network else 0
            if network_failures >= NAS_GONE_AFTER:
                record.fail("the NAS stopped answering: the remaining files were not sent")
                self._finish(record, stores)
                yield OUT_OF_RESOURCES, None
                return
            yield PENDING, _placeholder(item)
        record.outcome = "done"

    def _finish(self, record: Retrieval, stores: Stores | None) -> None:
        """Write the audit row and the log line, once: before the final response where the handler gives it,
        else when pynetdicom is done with the handler (its `finally`)."""
        if record.written:
            return
        record.written = True
        record.sent = stores.sent if stores is not None else 0
        record.failed = record.attempted - record.sent
        if record.outcome == "failed":
            record.failed = record.files - record.sent
        if record.outcome == "done" and record.failed:
            record.outcome = "done_with_failures"
        try:
            self.audit.record(record)
        except NasError as exc:  # its database is down: the row waits in memory (`RetrievalAudit.record`)
            log.warning("DICOM node: the audit of a %s is kept back until its database answers: %s %s",
                        record.operation, exc.message, exc.hint)
        except Exception:  # the audit must not break the association; say so loudly
            log.exception("DICOM node: could not write the audit of a %s", record.operation)
        log.info("DICOM node: %s from %s (%s) to %s, %s %s: %d files, %d sent, %d failed, %s", record.operation,
                 record.caller_aet, record.caller_address, record.destination, record.level, record.keys,
                 record.files, record.sent, record.failed, record.outcome)
