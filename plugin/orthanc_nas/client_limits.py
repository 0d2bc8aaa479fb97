"""Per-client limits of the share listener, so that one client address cannot starve the others.

The listener serves anyone who can reach it, without credentials, from fixed pools: THREADS download
threads and waitress's connection limit. Without a limit per address, a few clients that ask for a
download and then never read hold every download thread (reconnecting before the stalled-download cut),
and a hundred connections that send their request one byte every few seconds ("slowloris") use up the
connections. Here:

- `DownloadSlots`: at most MAX_DOWNLOADS_PER_CLIENT downloads at once per client address (the address
  from X-Forwarded-For for a trusted proxy's requests); more answer 429.
- `guard(server)`: at most MAX_CONNECTIONS_PER_CLIENT open connections per address (the next ones are
  answered 429 and closed at once), and a request whose headers and body have not all arrived within
  REQUEST_TIMEOUT seconds is cut. A trusted reverse proxy's address is exempt from the connection cap:
  every request comes from it, and the proxy limits its own clients.

`guard` reaches into waitress's server object (its `channel_class`, `maintenance`, `active_channels`,
`_map`, and a channel's `request`/`addr`): those internals are used here only, and a unit test fails
loudly when waitress changes them.
"""

from __future__ import annotations

import logging
import threading
import time

from waitress.channel import HTTPChannel

log = logging.getLogger("orthanc_nas")

MAX_DOWNLOADS_PER_CLIENT = 2
MAX_CONNECTIONS_PER_CLIENT = 16
#: seconds a client has to send a whole request once it started one (or connected); checked at each
#: waitress maintenance (every CLEANUP_INTERVAL s), so a slow request is cut within the sum of both
REQUEST_TIMEOUT = 20
#: an idle connection (no request in progress) is closed after this many seconds (waitress's channel_timeout)
IDLE_TIMEOUT = 30
REFUSED = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 30\r\n\r\n"


class DownloadSlots:
    """Counts downloads in progress per client address; `acquire` is False when the address has its share."""

    def __init__(self, per_client: int = MAX_DOWNLOADS_PER_CLIENT):
        self.per_client = per_client
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def acquire(self, client: str) -> bool:
        with self._lock:
            count = self._counts.get(client, 0)
            if count >= self.per_client:
                return False
            self._counts[client] = count + 1
            return True

    def release(self, client: str) -> None:
        with self._lock:
            count = self._counts.get(client, 0) - 1
            if count > 0:
                self._counts[client] = count
            else:
                self._counts.pop(client, None)


def guard(server, *, exempt: str | None = None, per_client: int = MAX_CONNECTIONS_PER_CLIENT,
          request_timeout: float = REQUEST_TIMEOUT) -> None:
    """Cap the connections per address and cut slow requests on a waitress server (before it runs)."""
    make_channel = server.channel_class
    logged: dict[str, float] = {}  # host -> when its refusal was last logged: one line a minute, not one each

    def channel_or_refusal(srv, conn, addr, adj, map=None):
        host = addr[0] if isinstance(addr, tuple) and addr else None
        if host is not None and host != exempt:
            open_ = sum(1 for ch in srv._map.values() if isinstance(ch, HTTPChannel) and ch.addr
                        and ch.addr[0] == host)
            if open_ >= per_client:
                _refuse(conn)
                now = time.monotonic()
                if now - logged.get(host, -60.0) >= 60:
                    if len(logged) > 10_000:
                        logged.clear()
                    logged[host] = now
                    log.warning("share listener: refusing connections from %s, which has %d open", host, open_)
                return None
        return make_channel(srv, conn, addr, adj, map=map)

    server.channel_class = channel_or_refusal
    started: dict[HTTPChannel, float] = {}  # channel -> when its incomplete request was first seen
    maintenance = server.maintenance

    def cut_slow_requests(now: float) -> None:
        maintenance(now)
        seen = {}
        for channel in list(server.active_channels.values()):
            if channel.request is None:  # no request coming in (idle, or being answered)
                continue
            since = seen[channel] = started.get(channel, now)
            if now - since > request_timeout:
                log.warning("share listener: closing a connection from %s whose request did not arrive "
                            "within %d s", channel.addr[0] if channel.addr else "?", request_timeout)
                channel.handle_close()
                seen.pop(channel)
        started.clear()
        started.update(seen)

    server.maintenance = cut_slow_requests


def _refuse(conn) -> None:
    """Answer 429 without reading the request, and close; never blocks the server's thread."""
    try:
        conn.setblocking(False)
        conn.send(REFUSED)
    except OSError:
        pass
    finally:
        conn.close()
