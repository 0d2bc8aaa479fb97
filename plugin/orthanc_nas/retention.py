"""`ImportRetentionHours`: Orthanc's storage as a cache of the NAS.

What the plugin imported into Orthanc (the `imported` rows of the job store: instances Orthanc did not have
before) is deleted from Orthanc once that many hours have passed since it was last retrieved (imported,
or found already there by a later job). An instance whose stored file changed since the import (its MD5,
as Orthanc computes it, differs: a user replaced or modified it) is left alone and forgotten; an instance
without a recorded MD5 (Orthanc's `StoreMD5ForAttachments` off) is never deleted. The NAS files are
never touched.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .background import BackgroundThread
from .jobs import JobStore

log = logging.getLogger("orthanc_nas")

MAX_PAUSE = 300.0  # seconds between two sweeps at most


def sweep(store: JobStore, host, hours: float, now: float | None = None) -> int:
    """Delete from Orthanc what the plugin imported more than `hours` ago and is unchanged; returns how many."""
    now = time.time() if now is None else now
    deleted = 0
    for row in store.expired(now - hours * 3600):
        current = host.instance_md5(row["orthanc_id"])
        if current is not None and row["md5"] and current == row["md5"]:
            try:
                host.delete_instance(row["orthanc_id"])
                deleted += 1
            except Exception as exc:  # gone meanwhile, or Orthanc refused: forget it either way
                log.warning("retention: could not delete instance %s from Orthanc: %s", row["orthanc_id"], exc)
        elif current is not None:
            log.info("retention: instance %s changed since it was imported from the NAS: kept", row["orthanc_id"])
        store.forget(row["orthanc_id"])
    if deleted:
        log.info("retention: %d instance(s) imported from the NAS more than %g hours ago deleted from Orthanc",
                 deleted, hours)
    return deleted


class RetentionSweeper(BackgroundThread):
    """A thread sweeping every tenth of the retention time (at least every second, at most `MAX_PAUSE`)."""

    name, join_timeout = "nas-retention", 30.0

    def __init__(self, store: JobStore, host, hours: Callable[[], float | None]):
        super().__init__()
        self.store = store
        self.host = host
        self.hours = hours

    def _loop(self) -> None:
        while True:
            hours = self.hours()
            pause = MAX_PAUSE if not hours else min(MAX_PAUSE, max(1.0, hours * 360))
            if self._stop.wait(pause):
                return
            if hours:
                try:
                    sweep(self.store, self.host, hours)
                except Exception:
                    log.exception("retention: the sweep failed; it runs again later")
