"""`Throttle`: during working hours, at most `MaxFilesPerSecond` files read per second, evenly spaced.

The pace is a token bucket of one token (GCRA, "virtual scheduling"): each read takes the next
free moment, `1 / MaxFilesPerSecond` after the one before, so reads come smoothly, never in bursts.
The hours are looked up at each read (local time), so a run that crosses the boundary changes pace
at once.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from .errors import ConfigError

_HOURS = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-4]):([0-5]\d)$")


@dataclass(frozen=True)
class Throttle:
    """`Hours`: "HH:MM-HH:MM", local time; an end before the start spans midnight ("22:00-06:00")."""

    Hours: str = "07:00-19:00"
    MaxFilesPerSecond: float = 100

    def minutes(self) -> tuple[int, int]:
        m = _HOURS.match(self.Hours)
        assert m, self.Hours
        h1, m1, h2, m2 = map(int, m.groups())
        return h1 * 60 + m1, h2 * 60 + m2

    def holds_at(self, moment: datetime) -> bool:
        """Whether `moment` (local time) falls within `Hours`."""
        start, end = self.minutes()
        now = moment.hour * 60 + moment.minute
        return start <= now < end if start <= end else (now >= start or now < end)


def parse_throttle(raw, where: str = "Nas.Throttle") -> Throttle | None:
    """`null` or `{"Hours": "07:00-19:00", "MaxFilesPerSecond": 100}`; ConfigError naming the key otherwise."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"setting {where} must be null or an object", field=where)
    unknown = sorted(set(raw) - {"Hours", "MaxFilesPerSecond"})
    if unknown:
        raise ConfigError(f"unknown setting {where}.{unknown[0]}", f"Known keys of {where}: Hours, MaxFilesPerSecond.",
                          field=f"{where}.{unknown[0]}")
    hours = raw.get("Hours", "07:00-19:00")
    if not isinstance(hours, str) or not _HOURS.match(hours) or hours[:5] == hours[6:]:
        raise ConfigError(f"setting {where}.Hours must be two different times, like \"07:00-19:00\", "
                          f"not {hours!r}", field=f"{where}.Hours")
    rate = raw.get("MaxFilesPerSecond", 100)
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
        raise ConfigError(f"setting {where}.MaxFilesPerSecond must be a positive number", field=f"{where}.MaxFilesPerSecond")
    return Throttle(hours, rate)


class Pacer:
    """Holds every file read to the throttle's pace while its hours hold; shared by the reading threads."""

    def __init__(self, throttle: Throttle | None, local_now: Callable[[], datetime] = datetime.now):
        self.throttle = throttle
        self.local_now = local_now
        self._lock = threading.Lock()
        self._next = 0.0  # time.monotonic() of the next free moment

    def active(self) -> bool:
        """Whether the pace is held now (`throttled` in the status)."""
        return self.throttle is not None and self.throttle.holds_at(self.local_now())

    def wait(self, stop: threading.Event) -> None:
        """Return at this read's moment (at once outside the hours); early when `stop` is set."""
        if not self.active():
            return
        with self._lock:
            now = time.monotonic()
            at = max(now, self._next)
            self._next = at + 1.0 / self.throttle.MaxFilesPerSecond
        if at > now:
            stop.wait(at - now)
