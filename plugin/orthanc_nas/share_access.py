"""Who may download a share beyond holding its link: the passphrase, and the limit of downloads.

A passphrase comes either as the password of HTTP Basic authentication
(RFC 7617; scripts, `curl -u :passphrase`) or from the page's form, which
posts to the listener itself. A right passphrase from the form is remembered
by a cookie that proves it (an HMAC, under a key that lives as long as the
listener, of the share id): `HttpOnly`, `SameSite=Strict`, so no other site
can use or read it, and the form needs no CSRF token (it grants nothing
without the passphrase). The cookie ends with the link, or after 12 hours.

`DownloadSlots` keeps a share with `max_downloads` from being downloaded more
often than allowed by clients that start at the same time: a download takes
a slot while it runs; only a completed one is counted afterwards.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qs

from .shares import BUSY, USED_UP, Share

COOKIE_PREFIX = "nas_share_"
COOKIE_HOURS = 12
MAX_FORM_BYTES = 4096


class Unlocker:
    """Checks and grants access to shares that have a passphrase."""

    def __init__(self, check: Callable[[Share, str], bool]):
        self.check = check  # ShareStore.check_passphrase: slow on purpose
        self._key = secrets.token_bytes(32)

    def _proof(self, share: Share) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, share.id.encode(), hashlib.sha256).digest()).decode()

    def has_cookie(self, environ: Mapping, share: Share) -> bool:
        try:
            cookie = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        except CookieError:
            return False
        morsel = cookie.get(COOKIE_PREFIX + share.id)
        return morsel is not None and hmac.compare_digest(morsel.value.encode(), self._proof(share).encode())

    def cookie(self, environ: Mapping, share: Share, now: float) -> tuple[str, str]:
        """The `Set-Cookie` header that remembers a right passphrase for this share's pages."""
        max_age = max(1, int(min(share.expires_at - now, COOKIE_HOURS * 3600)))
        secure = "; Secure" if environ.get("wsgi.url_scheme") == "https" else ""
        return ("Set-Cookie", f"{COOKIE_PREFIX}{share.id}={self._proof(share)}; Max-Age={max_age}; "
                              f"HttpOnly; SameSite=Strict{secure}")


def basic_password(environ: Mapping) -> str | None:
    """The password of an `Authorization: Basic` header, or None; the user name is ignored.

    RFC 7617 leaves the charset open: the listener asks for UTF-8 (curl, browsers), but clients that
    send Latin-1 anyway (Python's requests) are understood too: bytes that are not UTF-8 are read as Latin-1.
    """
    scheme, _, value = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except binascii.Error:
        return ""  # sent, but unreadable: a wrong passphrase
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        decoded = raw.decode("latin-1")
    return decoded.partition(":")[2]


def form_passphrase(environ: Mapping) -> str | None:
    """The `passphrase` field of a posted form (`application/x-www-form-urlencoded`, at most 4 KiB)."""
    if not environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        return None
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return None
    if not 0 < length <= MAX_FORM_BYTES:
        return None
    body = environ["wsgi.input"].read(length)
    try:
        values = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return None
    return values.get("passphrase", [None])[0]


class DownloadSlots:
    """Downloads under way per share, so completed + running never passes `max_downloads`."""

    def __init__(self):
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, share: Share, completed: Callable[[str], int]) -> str | None:
        """Take a slot for a download of `share`: None when taken, else USED_UP or BUSY (the last
        downloads allowed are under way). Shares without a limit always get one."""
        if share.max_downloads is None:
            return None
        with self._lock:
            done = completed(share.id)
            if done >= share.max_downloads:
                return USED_UP
            if done + self._running[share.id] >= share.max_downloads:
                return BUSY
            self._running[share.id] += 1
            return None

    def give_back(self, share: Share) -> None:
        """The download ended (its outcome is recorded first, so a completed one is counted by then)."""
        if share.max_downloads is None:
            return
        with self._lock:
            self._running[share.id] -= 1
            if self._running[share.id] <= 0:
                del self._running[share.id]
