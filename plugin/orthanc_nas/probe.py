"""Trying a NAS connection: list its root folder within a time limit, and say what went wrong.

Behind `POST /nas/config/test` and the `test` of `PUT /nas/config`. Sources give
up on their own (an unreachable SMB host within 30 s), but a hung mount can block
a listing for much longer; the listing therefore runs in a thread of its own, and
the answer is given when it ends or when `timeout` has passed, whichever comes
first. A listing still stuck then is left to finish (or not) in the background.
"""

from __future__ import annotations

import logging
import threading
import time

from .errors import NasError, NasNetworkError
from .sources import Source

log = logging.getLogger("orthanc_nas")

PROBE_TIMEOUT = 30.0
ROOT_ENTRIES = 100


def try_source(source: Source, *, timeout: float = PROBE_TIMEOUT, close: bool = False) -> dict:
    """List the root of `source`: `{"ok": true, "entries", "elapsed_ms"}` or `{"ok": false, "kind", "error", "hint",
    "elapsed_ms"}`. `close` drops the source's sessions afterwards (a source made only for the test).

    An error that is not about the NAS (a bug) is logged and answered as kind `internal`.
    """
    outcome: dict = {}
    started = time.monotonic()

    def attempt() -> None:
        try:
            outcome["entries"] = source.list_root(ROOT_ENTRIES)
        except NasError as exc:
            outcome["error"] = exc
        except Exception:
            log.exception("testing the NAS connection (%s) failed unexpectedly", source.description)
            outcome["error"] = NasError("the connection test failed unexpectedly")
        finally:
            if close:
                source.close()

    worker = threading.Thread(target=attempt, name="nas-connection-test", daemon=True)
    worker.start()
    worker.join(timeout)
    elapsed_ms = round((time.monotonic() - started) * 1000)
    if "entries" in outcome:
        return {"ok": True, "entries": outcome["entries"], "elapsed_ms": elapsed_ms}
    error = outcome.get("error") or NasNetworkError(f"the NAS did not answer within {timeout:g} s")
    return {"ok": False, **error.to_json(), "elapsed_ms": elapsed_ms}
