"""The public share listener: `GET`/`HEAD /share/{token}` on a waitress server of its own.

Orthanc checks credentials before any plugin code runs, so a link that works
without an Orthanc account cannot go through Orthanc's port. The plugin
therefore serves downloads on `ShareServer.Host:Port` itself, from inside
the Orthanc process: nothing but this one route is reachable there, and when
the plugin is not running nothing is served at all.

Tokens are secrets: they never reach a log line. The plugin logs share ids,
and waitress's own records (which quote the request path) pass through
`RedactingHandler` on their way to Orthanc's log.
"""

from __future__ import annotations

import functools
import logging
import re
import socket
import threading
import time
from collections import OrderedDict

from waitress import create_server, wasyncore

from . import client_limits
from .archive import Interrupted, ShareArchive, content_disposition, series_archive
from .dicomdir import MissingAttributes, file_set_archive
from .errors import FileChanged, Gone, NasError, NotFound
from .share_access import DownloadSlots, Unlocker, basic_password, form_passphrase
from .share_page import (
    DICOMDIR_NOTE,
    FOLDERS_NOTE,
    PAGE_HEADERS,
    passphrase_page,
    refusal_page,
    share_page,
    summarize,
    wants_page,
)
from .shares import (
    BROKEN,
    BUSY,
    COMPLETE,
    DICOMDIR,
    DISCONNECTED,
    EXPIRED,
    FAILED,
    HEAD,
    LOCKED,
    PAGE,
    RATE_LIMITED,
    REVOKED,
    STARTED,
    STOPPED,
    UNAVAILABLE,
    UNKNOWN,
    UNLOCKED,
    USED_UP,
    WRONG_PASSPHRASE,
    BadTokenLimiter,
    Share,
)

log = logging.getLogger("orthanc_nas")

SHARE_PATH = re.compile(r"^/share/([^/]+)(/download)?$")  # the page (the zip for non-browsers), the zip
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
REFUSAL_WINDOW = 60  # s: refused requests of one address for one link share one audit row and log line
NO_STORE = [("Cache-Control", "no-store"), ("Referrer-Policy", "no-referrer"),
            ("X-Content-Type-Options", "nosniff"), ("X-Robots-Tag", "noindex")]
_TOKEN_IN_TEXT = re.compile(r"/share/[^\s/?#'\"]+")

STATUS_LINES = {200: "200 OK", 404: "404 Not Found", 410: "410 Gone", 429: "429 Too Many Requests",
                500: "500 Internal Server Error", 503: "503 Service Unavailable", 303: "303 See Other",
                400: "400 Bad Request", 401: "401 Unauthorized", 409: "409 Conflict"}
BASIC_CHALLENGE = ("WWW-Authenticate", 'Basic realm="share link", charset="UTF-8"')
#: (title, text, hint) of the answers refusing a link that exists
REFUSALS = {
    EXPIRED: ("This link has expired", "This link has expired: the time its sender allowed has passed.",
              "Ask the sender for a new link."),
    REVOKED: ("This link was revoked", "This link was revoked by its sender.", "Ask the sender for a new link."),
    USED_UP: ("This link is used up", "This link was downloaded as many times as its sender allowed.",
              "Ask the sender for a new link."),
    BUSY: ("A download is under way", "The last download this link allows is under way.",
           "Try again when it has ended: if it fails, the link can be downloaded again."),
}


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


class ShareApp:
    """The WSGI application: checks the link, audits the attempt, streams the zip."""

    def __init__(self, nas, limiter: BadTokenLimiter | None = None, stop: threading.Event | None = None):
        self.nas = nas  # NasApp: .shares, .catalog, .source()
        self.limiter = limiter or BadTokenLimiter()
        self.stop = stop or threading.Event()
        self.client_slots = client_limits.DownloadSlots()  # downloads at once per address
        # client -> (audit row, requests refused, end of the refusal) of the current refusal of each address
        self._refusals: OrderedDict[str, tuple[int, int, float]] = OrderedDict()
        self._refusals_lock = threading.Lock()
        self.unlocker = Unlocker(nas.shares.check_passphrase)
        self.slots = DownloadSlots()

    def __call__(self, environ, start_response):
        method = environ["REQUEST_METHOD"]
        reply = Reply(start_response, head=method == "HEAD", html=wants_page(environ))
        match = SHARE_PATH.match(environ.get("PATH_INFO", ""))
        download = match is not None and match.group(2) is not None
        # POST only to the page itself: the passphrase form
        if match is None or method not in (("GET", "HEAD") if download else ("GET", "HEAD", "POST")):
            return reply.text(404, "Not found.")
        client = environ.get("REMOTE_ADDR") or "unknown"
        try:
            return self._serve(match.group(1), client, environ, reply, download=download)
        except Exception:
            log.exception("share listener: a request from %s failed", client)
            return reply.refuse(500, "The server could not answer", "The server could not answer.",
                                "Try again later.")

    def _audit_refusal(self, client: str, wait: float, outcome: str = RATE_LIMITED,
                       share_id: str | None = None) -> bool:
        """One audit row per refusal of an address (and share, and reason), however many requests it refuses
        within `wait` seconds: `at` is the first, `finished_at` the latest, `detail` the count. A flood of
        requests cannot fill the disk with rows. True for the first request of a refusal (log it then)."""
        store = self.nas.shares
        now = time.monotonic()
        key = f"{client} {outcome} {share_id or ''}"
        with self._refusals_lock:
            row, count, until = self._refusals.pop(key, (None, 0, 0.0))
            first = row is None or now >= until
            if first:
                row, count = store.audit(client, share_id, outcome), 0
            count += 1
            self._refusals[key] = (row, count, now + wait)
            while len(self._refusals) > self.limiter.max_clients:
                self._refusals.popitem(last=False)
            store.finish(row, outcome, 0, f"{count} request{'s' if count > 1 else ''} refused")
        return first

    def _serve(self, token: str, client: str, environ, reply: Reply, *, download: bool):
        store = self.nas.shares
        wait = self.limiter.retry_after(client)
        if wait:
            self._audit_refusal(client, wait)
            return reply.refuse(429, "Too many wrong links", "Too many wrong links from your address;",
                                "try again later.", [("Retry-After", str(wait))])
        share = store.lookup(token)
        if share is None:
            store.audit(client, None, UNKNOWN)
            if self.limiter.miss(client):
                log.warning("share listener: refusing %s for a while after %d wrong links",
                            client, self.limiter.limit)
            return reply.refuse(404, "This link is not valid", "This link is not valid: no share link has this address.",
                                "Check that it was copied whole.")
        refusal = share.refusal(store.clock(), self._completed(share))
        if refusal:
            # counted like a wrong link (a dead link is no right to ask again and again), and written once
            # a minute per address and share with the number of requests, like a 429
            self.limiter.miss(client)
            if self._audit_refusal(client, REFUSAL_WINDOW, refusal, share.id):
                log.warning("share %s: refused a download to %s: the link is %s", share.id, client, refusal)
            return reply.refuse(410, *REFUSALS[refusal])
        # relative addresses of the page and of its form, from where this request is
        here = "../" + token if download else token
        if share.passphrase_hash is not None:
            locked = self._check_passphrase(share, here, client, environ, reply)
            if locked is not None:
                return locked
        if environ["REQUEST_METHOD"] == "POST":  # a form sent to a link without a passphrase: show its page
            return reply.redirect(here)
        if reply.html and not download:
            return self._page(share, token, client, reply)
        return self._download(share, client, reply)

    def _completed(self, share: Share) -> int:
        return self.nas.shares.completed(share.id) if share.max_downloads is not None else 0

    def _check_passphrase(self, share: Share, here: str, client: str, environ, reply: Reply):
        """None when the request proves the passphrase (Basic authentication, or the cookie of the form);
        otherwise the answer: the form or a 401 challenge, or for a posted form the way back to the page."""
        store = self.nas.shares
        if environ["REQUEST_METHOD"] == "POST":
            given = form_passphrase(environ)
            if given is None:  # not the form's body: ask again, counting nothing
                return reply.page(400, passphrase_page(here))
            if not store.check_passphrase(share, given):
                return self._wrong_passphrase(share, here, client, reply)
            store.audit(client, share.id, UNLOCKED)
            return reply.redirect(here, [self.unlocker.cookie(environ, share, store.clock())])
        given = basic_password(environ)
        if given is not None:
            return None if store.check_passphrase(share, given) else \
                self._wrong_passphrase(share, here, client, reply)
        if self.unlocker.has_cookie(environ, share):
            return None
        store.audit(client, share.id, LOCKED)
        if reply.html:
            return reply.page(401, passphrase_page(here))
        return reply.text(401, "This link needs its passphrase: send it as the password of HTTP Basic "
                               "authentication (curl -u :PASSPHRASE).", [BASIC_CHALLENGE])

    def _wrong_passphrase(self, share: Share, here: str, client: str, reply: Reply):
        """Counted like a wrong link: enough of them and the address is refused for a while (429)."""
        self.nas.shares.audit(client, share.id, WRONG_PASSPHRASE)
        log.warning("share %s: wrong passphrase from %s", share.id, client)
        if self.limiter.miss(client):
            log.warning("share listener: refusing %s for a while after %d wrong links or passphrases",
                        client, self.limiter.limit)
        if reply.html:
            return reply.page(401, passphrase_page(here, wrong=True))
        return reply.text(401, "Wrong passphrase. Check it with the sender.", [BASIC_CHALLENGE])

    def _page(self, share: Share, token: str, client: str, reply: Reply):
        """The page of a valid link for a browser: what it holds, until when, and its Download button."""
        store = self.nas.shares
        try:
            series = summarize(self.nas.catalog, share.series)
        except NasError as exc:
            store.audit(client, share.id, UNAVAILABLE, exc.message)
            return reply.refuse(503, "The shared images cannot be shown", f"{exc.message}.", "Try again later.")
        if not series:
            store.audit(client, share.id, UNAVAILABLE, "no series left in the index")
            return reply.refuse(410, "The shared images are gone", "They are no longer on the NAS.",
                                "Ask the sender for a new link.")
        store.audit(client, share.id, PAGE)
        left = share.max_downloads - self._completed(share) if share.max_downloads is not None else None
        return reply.page(200, share_page(token, series, expires_at=share.expires_at, now=store.clock(),
                                          downloads_left=left,
                                          layout_note=DICOMDIR_NOTE if share.layout == DICOMDIR else FOLDERS_NOTE))

    def _download(self, share: Share, client: str, reply: Reply):
        """The zip, streamed; a share with `max_downloads` takes one of its slots while the download runs."""
        store = self.nas.shares
        try:
            archive, filename = self._archive(share)
        except NasError as exc:
            store.audit(client, share.id, UNAVAILABLE, exc.message)
            log.warning("share %s: cannot serve %s: %s", share.id, client, exc.message)
            status = 410 if isinstance(exc, Gone) else 503
            return reply.refuse(status, "The shared images cannot be sent",
                                f"The shared images cannot be sent: {exc.message}.", "")
        headers = [("Content-Type", "application/zip"), ("Content-Length", str(len(archive))),
                   ("Content-Disposition", content_disposition(filename)), *NO_STORE]
        if reply.head:
            archive.close()
            store.audit(client, share.id, HEAD)
            reply.start_response(STATUS_LINES[200], headers)
            return []
        if not self.client_slots.acquire(client):  # one address cannot hold every download thread
            archive.close()
            self._audit_refusal(client, REFUSAL_WINDOW, RATE_LIMITED, share.id)
            return reply.refuse(429, "Too many downloads at once", "Too many downloads at once from your address.",
                                "Try again when one has ended.", [("Retry-After", "30")])
        refused = self.slots.take(share, store.completed)
        if refused:
            self.client_slots.release(client)
            archive.close()
            store.audit(client, share.id, refused)
            log.warning("share %s: refused a download to %s: the link is %s", share.id, client, refused)
            return reply.refuse(410 if refused == USED_UP else 409, *REFUSALS[refused],
                                [("Retry-After", "30")] if refused == BUSY else None)
        audit_id = store.audit(client, share.id, STARTED)
        log.info("share %s: download of %d bytes started by %s", share.id, len(archive), client)
        reply.start_response(STATUS_LINES[200], headers)
        return Download(archive, store, audit_id, share.id, client, self.stop,
                        on_end=functools.partial(self._download_ended, share, client))

    def _download_ended(self, share: Share, client: str) -> None:
        try:
            self.slots.give_back(share)
        finally:
            self.client_slots.release(client)

    def _archive(self, share: Share) -> tuple[ShareArchive, str]:
        """The zip in the share's layout. A DICOMDIR needs each file's UIDs from the index: files indexed by
        an older version lack them until the next indexing reads them again; meanwhile the folders serve."""
        try:
            if share.layout == DICOMDIR:
                try:
                    return file_set_archive(self.nas.catalog, self.nas.source(), share.series, stop=self.stop)
                except MissingAttributes as exc:
                    log.warning("share %s: sent in folders, not as a DICOMDIR: %s; the next indexing reads "
                                "such files again", share.id, exc)
            return series_archive(self.nas.catalog, self.nas.source(), share.series, stop=self.stop)
        except NotFound as exc:  # the share outlived its series (a later indexing removed them)
            raise Gone(exc.message.replace("is not in", "is no longer in")) from exc


class Download:
    """The body of one download; records how it ended (complete, broken, client gone, server stopping)."""

    def __init__(self, archive: ShareArchive, store, audit_id: int, share_id: str, client: str,
                 stop: threading.Event, on_end=None):
        self.archive, self.store, self.audit_id = archive, store, audit_id
        self.share_id, self.client, self.stop = share_id, client, stop
        self.on_end = on_end  # called once the outcome is recorded
        self.sent = 0
        self.ended = False

    def __iter__(self):
        try:
            for chunk in self.archive:
                self.sent += len(chunk)
                yield chunk
        except FileChanged as exc:
            self._end(BROKEN, exc.message)
            raise  # waitress closes the connection: the client sees a short, broken download
        except Interrupted:
            self._end(STOPPED, "the server stopped")
            raise
        except NasError as exc:
            self._end(FAILED, exc.message)
            raise
        except Exception as exc:
            self._end(FAILED, str(exc) or type(exc).__name__)
            raise
        self._end(COMPLETE)

    def close(self) -> None:
        """Called by waitress when the body ends for any reason: frees the NAS file."""
        try:
            self.archive.close()
        finally:
            self._end(STOPPED if self.stop.is_set() else DISCONNECTED, None)

    def _end(self, outcome: str, detail: str | None = None) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            self.store.finish(self.audit_id, outcome, self.sent, detail)
        finally:
            if self.on_end is not None:
                self.on_end()
        level = logging.INFO if outcome == COMPLETE else logging.WARNING
        log.log(level, "share %s: download by %s %s after %d bytes%s", self.share_id, self.client, outcome,
                self.sent, f": {detail}" if detail else "")


def _text(start_response, status: int, message: str, extra: list | None = None, *, head: bool = False):
    """A short answer for a person; no body for HEAD (waitress would send one)."""
    body = (message + "\n").encode("utf-8")
    start_response(STATUS_LINES[status], [("Content-Type", "text/plain; charset=utf-8"),
                                          ("Content-Length", str(len(body))), *NO_STORE, *(extra or [])])
    return [] if head else [body]


class Reply:
    """The answers of one request: short texts for scripts, pages for a browser; no body for HEAD."""

    def __init__(self, start_response, *, head: bool, html: bool):
        self.start_response, self.head, self.html = start_response, head, html

    def text(self, status: int, message: str, extra: list | None = None):
        return _text(self.start_response, status, message, extra, head=self.head)

    def page(self, status: int, body: bytes, extra: list | None = None):
        self.start_response(STATUS_LINES[status], [*PAGE_HEADERS, ("Content-Length", str(len(body))), *NO_STORE,
                                                   *(extra or [])])
        return [] if self.head else [body]

    def refuse(self, status: int, title: str, text: str, hint: str, extra: list | None = None):
        """Why a link does not work: a page for a browser, a line of text for others."""
        if self.html:
            return self.page(status, refusal_page(title, text, hint), extra)
        return self.text(status, f"{text} {hint}".strip(), extra)

    def redirect(self, location: str, extra: list | None = None):
        """303 to a relative address (after a posted form: reloading the page does not post it again)."""
        return self.text(303, "See the page of this link.", [("Location", location), *(extra or [])])


class ShareListener:
    """Runs a WSGI app on waitress in a thread of its own; `stop()` ends downloads in progress."""

    def __init__(self, app: ShareApp, host: str, port: int, *, threads: int = THREADS,
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

        server.trigger.pull_trigger(close_all)
        deadline = time.monotonic() + timeout
        self._thread.join(timeout)
        if not closed.is_set():
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
