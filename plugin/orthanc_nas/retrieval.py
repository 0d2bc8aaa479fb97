"""Jobs of retrieval: NAS series copied into this Orthanc, or sent to a DICOM modality (`POST /nas/retrieve`).

Jobs run in the background on the node that accepted them, at most `MAX_RUNNING` at once per node;
more wait there as `pending` in the order they came (with several nodes each node has its own limit and
queue; every node lists and cancels every job, see `jobs`). Files are read from the NAS `IN_FLIGHT` at a
time ahead of the one being stored or sent, with the indexer's retries, each within `READ_WITHIN` seconds
(the DICOM node's `NasReader`). When the NAS stops answering (`NAS_GONE_AFTER` files in a row not given
for network reasons) the job ends `failed` with the rest counted as failed: it never hangs.
`DELETE /nas/jobs/{id}` ends a job at the next file (asked on another node: once the running node has
read it, within `jobs.WATCH` seconds).

Into Orthanc: before a file is read, Orthanc is asked whether it has that SOP Instance UID; if it does,
the file is skipped. The bytes of the others are handed to `OrthancHost.store` (the glue posts them to
Orthanc's REST API in-process). Each instance Orthanc did not have is recorded (`JobStore.imported`)
for `ImportRetentionHours`; on an Orthanc with labels (1.12+, found from `/system`), its series gets the
label `LABEL`.

To a modality: C-STORE (PS3.4 B.2) with pynetdicom, one association per series, files sent as read
(nothing is stored in Orthanc); presentation contexts and the lossless conversions are the DICOM node's.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from .errors import NasError, NasNetworkError, NotFound
from .jobs import CANCELLED, DONE, FAILED, MAX_SAMPLES, ORTHANC, JobStore, JobWatch
from .store import DatabaseUnavailable
from .viewers import OrthancSeries, viewer_links

log = logging.getLogger("orthanc_nas")

MAX_RUNNING = 2  # jobs at once; more wait as pending
STORE_IN_FLIGHT = 4  # files a job hands to Orthanc at once (Orthanc stores them in parallel)
SAVE_EVERY = 0.5  # seconds between progress writes of a running job
LABEL = "nas"  # Orthanc label (1.12+) of series imported from the NAS
DIMSE_TIMEOUT = 60.0  # seconds a C-STORE or C-ECHO response may take
CONNECT_TIMEOUT = 10.0  # seconds to open a connection to a modality


@dataclass(frozen=True)
class Peer:
    """A DICOM modality Orthanc knows: its id in Orthanc, AE title, host and port."""

    id: str
    AET: str
    Host: str
    Port: int


class OrthancHost(Protocol):
    """What the glue gives the core of the Orthanc it runs in (Orthanc's REST API, in-process)."""

    def lookup(self, uid: str, level: str) -> str | None:
        """The Orthanc ID of a DICOM UID at `level` ("Instance", "Series", "Study"), or None."""

    def store(self, data: bytes) -> dict:
        """Store a DICOM file: Orthanc's answer to `POST /instances` (`ID`, `ParentSeries`, `Status`...)."""

    def instance_md5(self, instance_id: str) -> str | None:
        """The MD5 of the stored DICOM file, or None if the instance is gone."""

    def delete_instance(self, instance_id: str) -> None: ...

    def series(self, series_id: str) -> dict:
        """Orthanc's `GET /series/{id}`."""

    def instances(self, series_id: str) -> dict[str, str]:
        """The instances Orthanc has of a series: SOP Instance UID -> Orthanc ID."""

    def plugins(self) -> list[str]: ...

    def has_labels(self) -> bool: ...

    def add_label(self, series_id: str, label: str) -> None: ...

    def modalities(self) -> dict[str, Peer]:
        """Orthanc's DicomModalities as they are now, by id."""


@dataclass
class Job:
    """A job in memory while pending or running on this node; its row (`JobStore`) is written from it."""

    id: str
    to: str
    series: list[str]
    files_total: int
    cancel: threading.Event = field(default_factory=threading.Event)
    files_done: int = 0
    files_skipped: int = 0
    files_failed: int = 0
    bytes: int = 0
    samples: list[dict] = field(default_factory=list)
    saved_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)  # counters updated by store threads

    def fail(self, path: str, reason: str, count: int = 1) -> None:
        self.files_failed += count
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append({"path": path, "error": reason[:300]})

    def progress(self) -> dict:
        return {"files_done": self.files_done, "files_skipped": self.files_skipped,
                "files_failed": self.files_failed, "bytes": self.bytes, "error_samples": self.samples}


STOPPED = {"error": "Orthanc stopped while this job was running", "kind": "internal",
           "hint": "Start the retrieval again: instances already in Orthanc are skipped."}


class NasGone(NasNetworkError):
    """The NAS stopped answering during a job."""


class Retrievals:
    """Runs the jobs of one Orthanc. `host` is None where there is no Orthanc (the command line)."""

    def __init__(self, store: JobStore, catalog, source: Callable, host: OrthancHost | None,
                 calling_aet: Callable[[], str], max_running: int = MAX_RUNNING):
        self.store = store
        self.catalog = catalog
        self.source = source
        self.host = host
        self.calling_aet = calling_aet
        self._jobs: dict[str, Job] = {}
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, max_running), thread_name_prefix="nas-job")
        self._storers = ThreadPoolExecutor(STORE_IN_FLIGHT * max(1, max_running), thread_name_prefix="nas-store")
        try:
            failed = store.interrupted()
        except DatabaseUnavailable as exc:  # PostgreSQL down at start: the watch's sweep marks them later
            log.warning("jobs of retrieval cut off by a stop of Orthanc not marked yet: %s", exc.message)
            failed = 0
        if failed:
            log.warning("%d job(s) of retrieval were cut off by a stop of Orthanc: marked failed", failed)
        self._watch = JobWatch(store, lambda: list(self._jobs), self._cancel_here).start()

    # -- requests -----------------------------------------------------------------
    def destination(self, to: str) -> Peer | None:
        """The modality `to` names (None for Orthanc itself); NotFound if Orthanc does not know it."""
        if self.host is None:
            raise NotFound("there is no Orthanc to retrieve into here", "Use the REST routes inside Orthanc.")
        if to == ORTHANC:
            return None
        peer = self.host.modalities().get(to)
        if peer is None:
            raise NotFound(f"unknown destination {to!r}"[:200],
                           "GET /nas/destinations lists Orthanc and its DICOM modalities.", field="to")
        return peer

    def submit(self, series: list[str], to: str) -> str:
        """Queue a job; NotFound naming an unknown series or destination."""
        self.destination(to)
        known = self.catalog.series_rows(series)
        for key in series:
            if key not in known:
                raise NotFound(f"unknown series_key {key!r}"[:200], "Use a series_key found by GET /nas/search.",
                               field="series")
        total = sum(row["file_count"] for row in known.values())
        job = Job(self.store.create(series, to, total), to, series, total)
        with self._lock:
            self._jobs[job.id] = job
        self._pool.submit(self._run, job)
        log.info("job %s: %d series (%d files) to %s, queued", job.id, len(series), total, to)
        return job.id

    def describe(self, job_id: str) -> dict:
        self._save_live(job_id)
        return self.store.describe(job_id)

    def list(self) -> list[dict]:
        for job_id in list(self._jobs):
            self._save_live(job_id)
        return self.store.list()

    def cancel(self, job_id: str) -> dict:
        """Cancel a pending or running job of any node (a running one stops at its next file); 404 if unknown."""
        self._cancel_here(job_id)
        self.store.request_cancel(job_id)
        return self.store.describe(job_id)

    def _cancel_here(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.cancel.set()

    def _save_live(self, job_id: str) -> None:
        job = self._jobs.get(job_id)
        if job is not None:
            self.store.save_progress(job_id, **job.progress())

    def _tick(self, job: Job) -> None:
        now = time.monotonic()
        if now - job.saved_at >= SAVE_EVERY:
            job.saved_at = now
            self.store.save_progress(job.id, **job.progress())

    # -- running ------------------------------------------------------------------
    def _run(self, job: Job) -> None:
        try:
            if job.cancel.is_set() or not self.store.start(job.id):  # cancelled while pending
                return
            outcome: dict = {}
            try:
                peer = self.destination(job.to)
                if peer is None:
                    outcome = self._import(job)
                else:
                    self._send(job, peer)
                state = CANCELLED if job.cancel.is_set() else DONE
                if self._stopping.is_set():
                    state, outcome = FAILED, {"failure": STOPPED}
            except NasError as exc:
                state, outcome = FAILED, {"failure": exc.to_json()}
            except Exception as exc:
                log.exception("job %s failed", job.id)
                state, outcome = FAILED, {"failure": {"error": f"{type(exc).__name__}: {exc}"[:300],
                                                      "kind": "internal", "hint": "See Orthanc's log for details."}}
            self.store.update(job.id, state=state, finished_at=time.time(), **job.progress(), **outcome)
            log.info("job %s %s: %d of %d files (%d skipped, %d failed), %d bytes", job.id, state, job.files_done,
                     job.files_total, job.files_skipped, job.files_failed, job.bytes)
        finally:
            with self._lock:
                self._jobs.pop(job.id, None)

    def _files(self, key: str) -> list:
        from .dicom.retrieve import Instance

        rows = self.catalog.reader().execute(
            "SELECT path, size, SOPInstanceUID, SOPClassUID, TransferSyntaxUID FROM files "
            "WHERE series_key=? AND error IS NULL ORDER BY InstanceNumber IS NULL, InstanceNumber, path", (key,))
        return [Instance(r[0], r[1], r[2] or "", r[3], r[4]) for r in rows]

    def _reading(self, job: Job, files: list, *, raw: bool):
        """Yield `(Instance, data)` for the files the NAS gives; failures are counted in `job`. Raises
        NasGone when the NAS stops answering (the rest counted as failed)."""
        from .dicom.retrieve import NAS_GONE_AFTER, NasReader

        reader_class = raw_reader() if raw else NasReader
        stop = threading.Event()
        in_a_row = 0
        handled = 0
        for item, *outcome in reader_class(self.source(), files, stop):
            if job.cancel.is_set():
                stop.set()
                return
            handled += 1
            if len(outcome) == 1:
                in_a_row = 0
                yield item, outcome[0]
                continue
            reason, network = outcome
            job.fail(item.path, reason)
            in_a_row = in_a_row + 1 if network else 0
            if in_a_row >= NAS_GONE_AFTER:
                stop.set()
                rest = len(files) - handled
                if rest:
                    job.fail("", f"the NAS stopped answering: {rest} more file(s) not read", rest)
                raise NasGone(f"the NAS stopped answering during the job ({in_a_row} files in a row not given)")
            self._tick(job)

    def _import(self, job: Job) -> dict:
        host = self.host
        imported_series: dict[str, OrthancSeries] = {}
        labels = host.has_labels()
        rows = self.catalog.series_rows(job.series)
        for key in job.series:
            files = self._files(key)
            row = rows[key]
            # what Orthanc has of this series, in one call; a file whose instance Orthanc keeps in another
            # series is read and answered "AlreadyStored", so it is skipped all the same
            series_id = host.lookup(row["SeriesInstanceUID"], "Series") if row["SeriesInstanceUID"] else None
            has = host.instances(series_id) if series_id else {}
            missing, present = [], []
            for item in files:
                if job.cancel.is_set():
                    return {}
                found = has.get(item.sop_instance) if item.sop_instance else None
                if found:
                    present.append(found)
                    job.files_done += 1
                    job.files_skipped += 1
                else:
                    missing.append(item)
            self.store.retrieved_again(present)
            stored_here = False
            storing: collections.deque[Future] = collections.deque()  # files handed to Orthanc, in order
            try:
                for item, data in self._reading(job, missing, raw=True):
                    storing.append(self._storers.submit(self._store, job, item, data))
                    while storing and (len(storing) >= STORE_IN_FLIGHT or storing[0].done()):
                        stored_here |= storing.popleft().result()
                    self._tick(job)
            finally:
                while storing:
                    stored_here |= storing.popleft().result()
            if row["SeriesInstanceUID"] and (stored_here or not series_id):
                series_id = host.lookup(row["SeriesInstanceUID"], "Series")
            if series_id:
                study_id = host.series(series_id).get("ParentStudy", "")
                imported_series[key] = OrthancSeries(series_id, study_id, row["StudyInstanceUID"] or "",
                                                     row["SeriesInstanceUID"])
                if stored_here and labels:
                    host.add_label(series_id, LABEL)
        plugins = host.plugins()
        viewers = [{**link, "series": key} for key, s in imported_series.items() for link in viewer_links(plugins, s)]
        studies = list(dict.fromkeys(s.study_id for s in imported_series.values()))
        return {"orthanc": {"studies": studies, "series": [s.id for s in imported_series.values()]},
                "viewers": viewers}

    def _store(self, job: Job, item, data: bytes) -> bool:
        """Hand one file to Orthanc (in a thread of `_storers`) and count it; True if Orthanc did not have
        it, which is then recorded for ImportRetentionHours with the MD5 of its bytes (Orthanc's attachment
        MD5, unless Orthanc transcodes on ingest: then they differ and retention keeps it, the safe side)."""
        try:
            stored = self.host.store(data)
        except Exception as exc:  # Orthanc refused the file (not DICOM, storage full...)
            with job.lock:
                job.fail(item.path, f"Orthanc did not store it: {exc}")
            return False
        new = stored.get("Status") != "AlreadyStored"
        if new:
            self.store.imported(job.id, stored["ID"], stored.get("ParentSeries", ""), item.sop_instance,
                                hashlib.md5(data).hexdigest())
        with job.lock:
            job.files_done += 1
            job.files_skipped += 0 if new else 1
            job.bytes += len(data)
        return new

    def _send(self, job: Job, peer: Peer) -> None:
        from pynetdicom import evt
        from pynetdicom.status import code_to_category

        from .dicom.pynetdicom_internals import encode_command_sets_once, prompt, quiet, sender_only
        from .dicom.retrieve import contexts_for, no_delay, unsendable

        encode_command_sets_once()
        ae = new_ae(self.calling_aet())
        for key in job.series:
            files = self._files(key)
            if job.cancel.is_set():
                return
            ae.requested_contexts = contexts_for(files)
            assoc = ae.associate(peer.Host, peer.Port, ae_title=peer.AET, evt_handlers=[(evt.EVT_CONN_OPEN, no_delay)])
            if assoc.is_established:
                sender_only(assoc)  # the DICOM node's fix of pynetdicom's reactor race (see there)
                prompt(assoc)  # responses read at once, not after pynetdicom's idle 1 ms
                quiet(assoc)
            else:
                job.fail(key, f"{peer.AET} at {peer.Host}:{peer.Port} refused or did not answer the association "
                              f"for series {key}", len(files))
                continue
            try:
                for item, ds in self._reading(job, files, raw=False):
                    reason = unsendable(assoc.accepted_contexts, ds)
                    if reason is None and not assoc.is_established:
                        reason = f"{peer.AET} ended the association"
                    if reason is None:
                        status = assoc.send_c_store(ds)
                        code = getattr(status, "Status", None)
                        if code is None:
                            reason = f"{peer.AET} did not answer the C-STORE"
                        elif code_to_category(code) not in ("Success", "Warning"):
                            reason = f"{peer.AET} answered C-STORE status 0x{code:04X}"
                    if reason:
                        job.fail(item.path, reason)
                    else:
                        job.files_done += 1
                        job.bytes += item.size
                    self._tick(job)
            finally:
                if assoc.is_established:
                    assoc.release()

    def close(self) -> None:
        """Orthanc is stopping: every job ends at its next file, `failed` (as a job found running at the next
        start would be); pending ones never start and are marked so at the next start."""
        self._stopping.set()
        self._watch.stop()
        for job in list(self._jobs.values()):
            job.cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._storers.shutdown(wait=True)


def new_ae(aet: str):
    from pynetdicom import AE

    ae = AE(ae_title=aet)
    ae.acse_timeout = CONNECT_TIMEOUT
    ae.connection_timeout = CONNECT_TIMEOUT
    ae.dimse_timeout = DIMSE_TIMEOUT
    ae.network_timeout = DIMSE_TIMEOUT
    return ae


def echo(peer: Peer, calling_aet: str) -> dict:
    """C-ECHO (PS3.4 A.4) to a modality: `{"ok": true, "elapsed_ms"}`; NasNetworkError (502) otherwise."""
    from pynetdicom.sop_class import Verification

    ae = new_ae(calling_aet)
    ae.add_requested_context(Verification)
    began = time.monotonic()
    assoc = ae.associate(peer.Host, peer.Port, ae_title=peer.AET)
    if not assoc.is_established:
        raise NasNetworkError(f"{peer.AET} at {peer.Host}:{peer.Port} refused or did not answer the association",
                              f"Check that the modality {peer.id!r} runs, listens on {peer.Host}:{peer.Port} and "
                              f"accepts the calling AE title {calling_aet!r}.")
    try:
        status = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    if getattr(status, "Status", None) != 0x0000:
        raise NasNetworkError(f"{peer.AET} did not answer the C-ECHO with success",
                              "Check the modality's DICOM settings.")
    return {"ok": True, "elapsed_ms": round((time.monotonic() - began) * 1000, 1)}


@functools.cache
def raw_reader() -> type:
    """The DICOM node's `NasReader`, giving each file's bytes as stored (for Orthanc to store them as they
    are). Made at first use, so pynetdicom loads only when a job runs."""
    from .dicom.retrieve import NasReader

    class RawReader(NasReader):
        _read = NasReader._bytes

    return RawReader
