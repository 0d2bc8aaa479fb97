"""The public share listener: `GET`/`HEAD /share/{token}` on a waitress server of its own (`share_server`).

Orthanc checks credentials before any plugin code runs, so a link that works
without an Orthanc account cannot go through Orthanc's port. The plugin
therefore serves downloads on `ShareServer.Host:Port` itself, from inside
the Orthanc process: nothing but this one route is reachable there, and when
the plugin is not running nothing is served at all.

Tokens are secrets: they never reach a log line. The plugin logs share ids,
and waitress's own records (which quote the request path) pass through
`share_server.RedactingHandler` on their way to Orthanc's log.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections import OrderedDict

from . import client_limits
from .archive import Interrupted, ShareArchive, content_disposition, series_archive
from .dicomdir import MissingAttributes, file_set_archive
from .errors import FileChanged, Gone, NasError, NotFound
from .share_access import DownloadSlots, Unlocker, basic_password, form_passphrase
from .share_page import (
    DICOMDIR_NOTE,
    FOLDERS_NOTE,
    passphrase_page,
    share_page,
    summarize,
    wants_page,
)
from .share_reply import BASIC_CHALLENGE, NO_STORE, STATUS_LINES, Reply
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
REFUSAL_WINDOW = 60  # s: refused requests of one address for one link share one audit row and log line
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
