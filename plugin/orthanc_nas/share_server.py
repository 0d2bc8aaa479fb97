"""The public share listener's server: waitress on `ShareServer.Host:Port`, in a thread of its own.

`ShareListener` runs the share links' WSGI app (`listener.ShareApp`) and reaches into waitress where it
must: its `maintenance` (cutting stalled downloads), `_map` and `task_dispatcher` (stopping). Tokens are
secrets: waitress's own records, which quote the request path, pass through `RedactingHandler` on their
way to Orthanc's log.
"""

from __future__ import annotations

import functools
import logging
import re
import socket
import threading
import time

from waitress import create_server, wasyncore

from . import client_limits
from .archive import Interrupted
from .errors import NasError

log = logging.getLogger("orthanc_nas")

THREADS = 8  # simultaneous downloads; more wait in waitress's queue
# Waitress keeps unsent output in memory up to the high watermark, then makes the
# download thread wait; past `outbuf_overflow` a buffer would move to a temporary
# file. Overflow far above the watermark: a slow client never causes a disk write.
OUTBUF_HIGH_WATERMARK = 2 * 1024 * 1024
OUTBUF_OVERFLOW = 64 * 1024 * 1024
# A download whose client has taken no byte for this long is cut, so that clients which stop reading
# without disconnecting cannot hold every download thread. Checked every CLEANUP_INTERVAL seconds.
STALLED_AFTER = 120
CLEANUP_INTERVAL = 10
_TOKEN_IN_TEXT = re.compile(r"/share/[^\s/?#'\"]+")


def redact(text: str) -> str:
    """Cut share tokens out of a text that may quote a request path."""
    return _TOKEN_IN_TEXT.sub("/share/<token>", text)


class RedactingHandler(logging.Handler):
    """Passes waitress's records to the plugin's log with tokens cut out.

    A download that ends on a NAS error (a changed file, a network failure) or
    because the server stops is already audited and logged by `Download`:
    waitress's traceback of it is dropped.
    """

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, NasError | Interrupted):
            return
        try:
            text = redact(self.format(record))
        except Exception:  # a record that cannot be formatted must not break the server
            text = "unreadable log record"
        log.log(record.levelno, "share listener: %s", text)


_redacting_handler = RedactingHandler()


def route_waitress_logs() -> None:
    """Send waitress's logger (and its children) only through `RedactingHandler`."""
    waitress_log = logging.getLogger("waitress")
    if _redacting_handler not in waitress_log.handlers:
        waitress_log.addHandler(_redacting_handler)
    waitress_log.setLevel(logging.WARNING)  # its per-request info lines quote paths and add nothing
    waitress_log.propagate = False


class ShareListener:
    """Runs a WSGI app on waitress in a thread of its own; `stop()` ends downloads in progress.

    `app` is the WSGI app with a `stop` event (`listener.ShareApp`), set by `stop()`."""

    def __init__(self, app, host: str, port: int, *, threads: int = THREADS,
                 trusted_proxy: str | None = None):
        self.app, self.host, self.requested_port, self.threads = app, host, port, threads
        self.trusted_proxy = trusted_proxy
        self.port: int | None = None
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> bool:
        """Listen and serve. If the address cannot be had, say so in the log and return False."""
        route_waitress_logs()
        try:
            sock = _bind(self.host, self.requested_port)
        except OSError as exc:
            log.error("the share listener cannot listen on %s:%s (%s). Share links will not work until "
                      "Nas.ShareServer.Port is set to a free port (or the other program is stopped) and "
                      "Orthanc is restarted; the rest of the NAS plugin works.",
                      self.host, self.requested_port, exc.strerror or exc)
            return False
        # Behind a reverse proxy every request comes from the proxy's address: waitress then takes the
        # client's from the last X-Forwarded-For entry, for the proxy's requests only, and drops the header
        # from anyone else (who could otherwise choose the address the limiter counts).
        proxy = {"trusted_proxy": self.trusted_proxy, "trusted_proxy_count": 1,
                 "trusted_proxy_headers": {"x-forwarded-for"}, "clear_untrusted_proxy_headers": True} \
            if self.trusted_proxy else {}
        self._server = create_server(
            self.app, sockets=[sock], threads=self.threads, ident="orthanc-nas",
            outbuf_high_watermark=OUTBUF_HIGH_WATERMARK, outbuf_overflow=OUTBUF_OVERFLOW,
            asyncore_use_poll=True, cleanup_interval=CLEANUP_INTERVAL,
            channel_timeout=client_limits.IDLE_TIMEOUT, **proxy)
        # waitress closes idle connections in `maintenance`, run by its own thread every cleanup_interval,
        # but never one with a request in progress; the instance's method is wrapped to cut stalled ones too.
        self._server.maintenance = functools.partial(_cut_stalled, self._server, self._server.maintenance)
        client_limits.guard(self._server, exempt=self.trusted_proxy)
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._server.run, name="nas-share-listener", daemon=True)
        self._thread.start()
        log.info("share listener on %s:%d", self.host, self.port)
        return True

    def stop(self, timeout: float = 5.0) -> None:
        """Stop listening, cut the connections of downloads in progress and wait for their threads."""
        server, self._server = self._server, None
        if server is None:
            return
        self.app.stop.set()  # a download reading from the NAS ends at its next chunk
        closed = threading.Event()

        def close_all() -> None:  # runs in the server's own thread, which owns its sockets
            for channel in list(server.active_channels.values()):
                channel.handle_close()  # wakes a download thread waiting to send, which then ends
            wasyncore.close_all(server._map)
            closed.set()

        deadline = time.monotonic() + timeout
        try:
            server.trigger.pull_trigger(close_all)
        except OSError as exc:  # its wake-up pipe is gone
            log.warning("share listener: its loop could not be woken to stop (%s)", exc)
        self._thread.join(timeout)
        if not closed.is_set():
            # Only once its loop has ended: closing the connections from here while that thread still polls
            # them lets both threads close one descriptor number, the second time someone else's.
            if self._thread.is_alive():
                log.warning("share listener: its loop did not stop within %.0f s; it closes its connections "
                            "when it does", timeout)
            else:
                wasyncore.close_all(server._map, ignore_all=True)
        server.task_dispatcher.shutdown(timeout=max(0.1, deadline - time.monotonic()))
        log.info("share listener stopped")


def _cut_stalled(server, maintenance, now: float) -> None:
    """waitress's maintenance, then: close the connections whose download has output waiting that the client
    has not taken for STALLED_AFTER s. (A request still queued for a thread, or one waiting on a slow NAS,
    has nothing waiting to be sent: it is left alone.)"""
    maintenance(now)
    for channel in list(server.active_channels.values()):
        if channel.requests and channel.total_outbufs_len and channel.last_activity < now - STALLED_AFTER:
            log.warning("share listener: cutting a download to %s, which took nothing for %d s",
                        channel.addr[0] if channel.addr else "?", STALLED_AFTER)
            channel.handle_close()  # wakes the download thread waiting to send: it ends as disconnected


def _bind(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                         flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        # lets a restarted Orthanc listen again at once, not after TIME_WAIT; still refuses a port in use
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock
