"""The running product: settings, index, status, indexer and NAS source of one Orthanc."""

from __future__ import annotations

import logging
import threading

from .catalog import Catalog
from .config import Settings, load_saved_connection
from .indexer import Indexer
from .sources import Source, open_source
from .status import IndexStatus

log = logging.getLogger("orthanc_nas")


class NasApp:
    """Everything the REST handlers need; built once when the plugin loads."""

    def __init__(self, settings: Settings, *, parse_processes: int | None = None):
        self.base_settings = settings
        self.settings = load_saved_connection(settings)
        self.catalog = Catalog(self.settings.DataDirectory)
        self.status = IndexStatus(self.settings.DataDirectory)
        self.status.load(self.catalog.counts()["series"])
        self._source: Source | None = None
        self._source_lock = threading.Lock()
        self.indexer = Indexer(self.catalog, self.status, self.source, lambda: self.settings.Workers,
                               parse_processes=parse_processes)

    def source(self) -> Source:
        """The NAS source for the current connection (kept, so SMB sessions are reused)."""
        with self._source_lock:
            if self._source is None:
                self._source = open_source(self.settings.Connection, self.settings.Enumerator)
            return self._source

    def reconnect(self, settings: Settings) -> None:
        """Use new settings: the old source's sessions are dropped so new credentials take effect."""
        with self._source_lock:
            old, self._source = self._source, None
            self.settings = settings
        if old is not None:
            old.close()

    def close(self) -> None:
        """Orthanc is stopping: stop indexing, drop NAS sessions."""
        self.indexer.stop()
        self.indexer.wait(timeout=30)
        with self._source_lock:
            if self._source is not None:
                self._source.close()
                self._source = None
