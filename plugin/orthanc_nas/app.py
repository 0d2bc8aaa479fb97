"""The running product: settings, index, status, indexer, shares and NAS source of one Orthanc."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace

from .allowed import check_web_connection
from .catalog import Catalog
from .cluster import ClusterRun, combined
from .cluster_indexing import ClusterHelper
from .config import Connection, Settings
from .errors import ConfigError
from .indexer import Indexer
from .jobs import JobStore
from .listener import ShareApp
from .probe import try_source
from .retention import RetentionSweeper
from .retrieval import OrthancHost, Retrievals
from .schedule import Scheduler
from .share_server import ShareListener
from .shares import ShareStore
from .sources import Source, open_source
from .status import IndexStatus
from .store import DatabaseUnavailable, open_engine
from .web_config import SAVED_CONFIG_NAME, load_saved_connection, save_connection

log = logging.getLogger("orthanc_nas")


class NasApp:
    """Everything the REST handlers need; built once when the plugin loads."""

    def __init__(self, settings: Settings, *, parse_processes: int | None = None):
        self.base_settings = settings
        self.settings = load_saved_connection(settings)
        if self.settings.Connection != settings.Connection:  # saved from the web before AllowedRoots narrowed
            try:
                check_web_connection(self.settings.Connection, settings, settings.Connection,
                                     f"{SAVED_CONFIG_NAME}.Connection")
            except ConfigError as exc:
                log.error("%s: ignored, orthanc.json's connection is used. %s", exc.message, exc.hint)
                self.settings = settings.with_connection(settings.Connection, self.settings.Workers)
        self.engine = open_engine(self.settings.Database, self.settings.DataDirectory)
        self.catalog = Catalog(self.settings.DataDirectory, self.engine)
        self.status = IndexStatus(self.settings.DataDirectory)
        try:
            self.status.load(self.catalog.counts()["series"])
        except DatabaseUnavailable as exc:  # PostgreSQL down while Orthanc starts: the plugin starts anyway
            log.warning("%s; the NAS index is used once it answers", exc.message)
            self.status.load()
        self._source: Source | None = None
        self._source_lock = threading.Lock()
        self.indexer = Indexer(self.catalog, self.status, self.source, lambda: self.settings.Workers,
                               parse_processes=parse_processes, throttle=self.settings.Throttle,
                               excluded_folders=self.settings.ExcludedFolders,
                               skipped_extensions=self.settings.SkippedExtensions)
        self.scheduler: Scheduler | None = None
        self.shares = ShareStore(self.settings.DataDirectory, engine=self.engine)
        self.cluster: ClusterRun | None = None
        if self.engine.shared:  # several Orthanc nodes on one database: one run for them all
            self.cluster = self.indexer.cluster = ClusterRun(self.engine)
            self.status.on_write = self._publish_status
            self.cluster_helper = ClusterHelper(self, self.cluster)
            self.cluster_helper.start()
        self.listener: ShareListener | None = None
        self.dicom_node = None  # the DICOM node (`start_dicom_node`), when DicomServer.Enabled
        self._dicom_audit = None  # its audit read without the node (`dicom_audit`)
        self._dicom_audit_lock = threading.Lock()
        self.jobs = JobStore(self.settings.DataDirectory, engine=self.engine)  # shared by the nodes on PostgreSQL
        self.retrievals: Retrievals | None = None  # jobs of retrieval (`start_retrievals`), inside Orthanc
        self.retention: RetentionSweeper | None = None

    def start_retrievals(self, host: OrthancHost) -> None:
        """Run jobs of retrieval into the Orthanc `host` stands for, and its ImportRetentionHours sweeps."""
        self.retrievals = Retrievals(self.jobs, self.catalog, self.source, host,
                                     lambda: self.settings.DicomServer.AET)
        self.retention = RetentionSweeper(self.jobs, host, lambda: self.settings.ImportRetentionHours)
        self.retention.start()

    def start_share_listener(self) -> bool:
        """Serve share links on `ShareServer.Host:Port`; False (and a clear log line) if the port is taken."""
        server = self.settings.ShareServer
        self.listener = ShareListener(ShareApp(self), server.Host, server.Port,
                                      trusted_proxy=server.TrustedProxy)
        if not self.listener.start():
            return False
        if not server.PublicUrl:
            log.info("share links will start with %s; set Nas.ShareServer.PublicUrl if colleagues reach this "
                     "server under another address (a host name, a reverse proxy)", self.share_url("")[:-1])
        return True

    def start_schedule(self) -> None:
        """Start incremental runs at the times of `Schedule` (nothing without one); see `schedule`."""
        if self.settings.Schedule and self.scheduler is None:
            self.scheduler = Scheduler(self.settings.Schedule, self._scheduled_run,
                                       lambda at: self.status.update(next_run_at=at)).start()

    def _scheduled_run(self) -> None:
        self.source()  # no connection: not started (logged by the scheduler)
        self.indexer.start(trigger="schedule")

    def start_dicom_node(self, modalities: Callable[[], list] = list, orthanc=None) -> bool:
        """Start the DICOM query/retrieve node (see `orthanc_nas.dicom`); False (logged) if it cannot listen.

        `modalities()` gives Orthanc's DicomModalities as `Peer`s at each call; `orthanc` is Orthanc's own AE.
        """
        from .dicom import DicomNode, Peers, RetrievalAudit  # pynetdicom is loaded only when the node runs

        settings = self.settings.DicomServer
        self.dicom_node = DicomNode(settings, self.catalog, self.source, Peers(settings, modalities, orthanc),
                                    RetrievalAudit(self.settings.DataDirectory, self.engine))
        return self.dicom_node.start()

    def dicom_audit(self):
        """The DICOM node's audit (`GET /nas/dicom/retrievals`): the running node's; without one here, the
        audit a node made before (or, on a shared database, another node); None when there is none."""
        if self.dicom_node is not None:
            return self.dicom_node.audit
        with self._dicom_audit_lock:
            if self._dicom_audit is None and self.engine.exists("dicom"):
                from .dicom.audit import RetrievalAudit

                self._dicom_audit = RetrievalAudit(self.settings.DataDirectory, self.engine)
            return self._dicom_audit

    def share_url(self, token: str) -> str:
        """The link of a token: `PublicUrl`, or the listener's own address, then `/share/<token>`."""
        server = self.settings.ShareServer
        if not server.PublicUrl and self.listener is not None and self.listener.port:
            server = replace(server, Port=self.listener.port)  # Port 0 in the settings: the port actually used
        return f"{server.base_url()}/share/{token}"

    def source(self) -> Source:
        """The NAS source for the current connection (kept, so SMB sessions are reused)."""
        with self._source_lock:
            if self._source is None:
                self._source = open_source(self.settings.Connection, self.settings.Enumerator)
            return self._source

    def configure(self, settings: Settings) -> None:
        """Save settings made from the web to nas-config.json and use them at once; Busy while indexing runs.

        Workers goes into the file only when it differs from orthanc.json's.
        """
        with self.indexer.idle("the NAS connection cannot change while indexing runs"):
            save_connection(settings, include_workers=settings.Workers != self.base_settings.Workers)
            self.reconnect(settings)
        log.info("NAS connection saved from the web: %s, %d workers", settings.Connection.describe(),
                 settings.Workers)

    def test_connection(self, connection: Connection | None = None) -> dict:
        """List the root of `connection` (default: the one in use) through a source of its own, so the
        test logs on afresh and leaves the sessions of indexing and downloads alone. See `probe`."""
        connection = connection or self.settings.Connection
        return try_source(open_source(connection, self.settings.Enumerator), close=True)

    def reconnect(self, settings: Settings) -> None:
        """Use new settings: the old source's sessions are dropped so new credentials take effect."""
        with self._source_lock:
            old, self._source = self._source, None
            self.settings = settings
        if old is not None:
            old.close()

    def _publish_status(self, snapshot: dict) -> None:
        if self.cluster.publish(snapshot):  # another node asked the run to stop
            self.indexer.stop()

    def status_snapshot(self) -> dict:
        """`GET /nas/status`: this node's run, or with several nodes the cluster's (whichever node runs it)."""
        snapshot = self.status.snapshot()
        if self.cluster is None:
            return snapshot
        if self.indexer.running:  # this node coordinates the run: the other nodes' counters added
            try:
                return combined(snapshot, self.cluster.parts(self.cluster.run_id, self.cluster.node))
            except DatabaseUnavailable:
                return snapshot
        try:
            found = self.cluster.current()
        except DatabaseUnavailable:
            return snapshot
        if found is None:
            return snapshot
        node, _, data = found
        return {**data, "next_run_at": snapshot.get("next_run_at"), "series_count": snapshot["series_count"]
                if node == self.cluster.node else data.get("series_count", 0), "node": node}

    def stop_indexing(self) -> bool:
        """`DELETE /nas/index`: stop the run here, and with several nodes wherever it runs. True if one ran."""
        stopping = self.indexer.stop()
        if self.cluster is not None:
            stopping = self.cluster.request_stop() or stopping
        return stopping

    def close(self) -> None:
        """Orthanc is stopping: end downloads and retrievals in progress, stop indexing, drop NAS sessions."""
        if self.dicom_node is not None:
            self.dicom_node.stop()
            self.dicom_node.audit.close()
        if self._dicom_audit is not None:
            self._dicom_audit.close()
        if self.listener is not None:
            self.listener.stop()
        if self.retention is not None:
            self.retention.stop()
        if self.retrievals is not None:
            self.retrievals.close()
        if self.scheduler is not None:
            self.scheduler.stop()
        if self.cluster is not None:
            self.cluster_helper.stop()
        self.indexer.stop()
        self.indexer.wait(timeout=30)
        with self._source_lock:
            if self._source is not None:
                self._source.close()
                self._source = None
        self.shares.close()
        self.jobs.close()
        self.engine.close()
