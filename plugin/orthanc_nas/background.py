"""The lifecycle the plugin's periodic work shares: a daemon thread running `_loop` until `stop()`.

Used by the metrics pusher, the schedule, the jobs' watch and the retention sweeper: each owns its
state and says only what one turn does; starting, stopping and waiting for the thread live here.
"""

from __future__ import annotations

import threading


class BackgroundThread:
    """A daemon thread named `name` running `_loop`, which returns once `self._stop` is set.

    `stop()` sets it and waits up to `join_timeout` seconds (not at all if the thread never started,
    e.g. when Orthanc stops before the plugin's start finished).
    """

    name = "nas-background"
    join_timeout = 10.0

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.join_timeout)

    def _loop(self) -> None:
        raise NotImplementedError
