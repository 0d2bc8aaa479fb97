"""Share links: `shares.db` (SQLite, or the `Database` PostgreSQL, see `store`) and the limiter of wrong links.

A share gives whoever holds its token the series it names, until it expires
or is revoked. Only the SHA-256 of a token is stored: a copy of `shares.db`
(a backup, a support bundle) opens nothing. Every download attempt, allowed
or not, goes into the `audit` table with its time, the client address, the
share (when known) and the outcome; never the token.

Schema changes go through numbered migrations, as for the index.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import store
from .errors import BadRequest, NotFound, shown
from .passphrase import MAX_LENGTH as MAX_PASSPHRASE
from .passphrase import MIN_LENGTH as MIN_PASSPHRASE
from .passphrase import hash_passphrase, verify_passphrase
from .status import iso

SHARES_NAME = "shares.db"
TOKEN_BYTES = 32  # 256 bits
TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")  # what secrets.token_urlsafe(32) gives
MAX_SERIES = 1000
MAX_LABEL = 200

MIGRATIONS: list[str] = [
    # 1: shares and the audit of download attempts
    """
    CREATE TABLE shares (
        id TEXT PRIMARY KEY,
        token_sha256 BLOB NOT NULL UNIQUE,
        label TEXT,
        series TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        client TEXT NOT NULL,
        share_id TEXT,
        outcome TEXT NOT NULL,
        detail TEXT,
        bytes_sent INTEGER,
        finished_at REAL
    );
    CREATE INDEX audit_by_share ON audit(share_id, outcome);
    """,
    # 2: an optional passphrase (its scrypt hash), a limit of completed downloads, the zip's layout.
    # Links made before keep the folders they were made with.
    """
    ALTER TABLE shares ADD COLUMN passphrase_hash TEXT;
    ALTER TABLE shares ADD COLUMN max_downloads INTEGER;
    ALTER TABLE shares ADD COLUMN layout TEXT NOT NULL DEFAULT 'folders';
    """,
]

#: outcomes written to the audit table
STARTED, COMPLETE, HEAD = "started", "complete", "head"
BROKEN, DISCONNECTED, STOPPED, FAILED = "broken", "disconnected", "stopped", "error"
UNKNOWN, EXPIRED, REVOKED, RATE_LIMITED, UNAVAILABLE = "unknown", "expired", "revoked", "rate_limited", "unavailable"
USED_UP, BUSY = "used_up", "busy"  # every allowed download done; the last ones allowed are under way
PAGE, LOCKED, WRONG_PASSPHRASE, UNLOCKED = "page", "passphrase_asked", "wrong_passphrase", "unlocked"

#: the zip's layouts: a DICOM file-set (DICOMDIR, PS3.10 file IDs) or the readable folders of the NAS
DICOMDIR, FOLDERS = "dicomdir", "folders"
LAYOUTS = (DICOMDIR, FOLDERS)
MAX_DOWNLOADS = 1000


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


@dataclass(frozen=True)
class Share:
    id: str
    label: str | None
    series: list[str]
    created_at: float
    expires_at: float
    revoked_at: float | None
    passphrase_hash: str | None = None
    max_downloads: int | None = None
    layout: str = FOLDERS

    def refusal(self, now: float, completed: int = 0) -> str | None:
        """Why this share may not be downloaded now (REVOKED, EXPIRED or USED_UP), or None.

        `completed`: the downloads of it that completed (see `ShareStore.completed`)."""
        if self.revoked_at is not None:
            return REVOKED
        if now >= self.expires_at:
            return EXPIRED
        if self.max_downloads is not None and completed >= self.max_downloads:
            return USED_UP
        return None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Share:
        return cls(row["id"], row["label"], json.loads(row["series"]), row["created_at"], row["expires_at"],
                   row["revoked_at"], row["passphrase_hash"], row["max_downloads"], row["layout"])


@dataclass(frozen=True)
class ShareOptions:
    """A checked `POST /nas/shares` body."""

    series: list[str]
    hours: float
    label: str | None = None
    passphrase: str | None = None
    max_downloads: int | None = None
    layout: str = DICOMDIR


SHARE_FIELDS = {"series", "expires_in_hours", "label", "passphrase", "max_downloads", "layout"}


def parse_share_request(body: dict, default_hours: float, max_hours: float) -> ShareOptions:
    """Validate a `POST /nas/shares` body; 400 naming the field otherwise."""
    unknown = set(body) - SHARE_FIELDS
    if unknown:
        raise BadRequest(f"unknown field {sorted(unknown)[0]!r} in the body",
                         'The body holds "series", and optionally "expires_in_hours", "label", "passphrase", '
                         '"max_downloads" and "layout".', field=sorted(unknown)[0])
    series = body.get("series")
    if not isinstance(series, list) or not series or not all(isinstance(k, str) and k for k in series):
        raise BadRequest("field 'series' must be a non-empty list of series keys",
                         'Give the series_key values found by GET /nas/search, e.g. {"series": ["..."]}.', field="series")
    if len(series) > MAX_SERIES:
        raise BadRequest(f"field 'series' holds more than {MAX_SERIES} series", "Share fewer series per link.", field="series")
    hours = body.get("expires_in_hours", default_hours)
    # bool is an int in Python; JSON's true is not a number of hours. Python's json also reads NaN/Infinity.
    if isinstance(hours, bool) or not isinstance(hours, int | float) or not math.isfinite(hours) \
            or not 0 < hours <= max_hours:
        raise BadRequest(f"field 'expires_in_hours' must be a positive number of hours, at most {max_hours:g}",
                         f"Nas.MaxShareHours allows links of at most {max_hours:g} hours.", field="expires_in_hours")
    label = body.get("label")
    if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL):
        raise BadRequest(f"field 'label' must be a string of at most {MAX_LABEL} characters", field="label")
    passphrase = body.get("passphrase")
    if passphrase == "":
        passphrase = None  # an empty field of a form: no passphrase
    if passphrase is not None and (not isinstance(passphrase, str)
                                   or not MIN_PASSPHRASE <= len(passphrase) <= MAX_PASSPHRASE):
        raise BadRequest(f"field 'passphrase' must be a string of {MIN_PASSPHRASE} to {MAX_PASSPHRASE} characters",
                         "Choose a passphrase of a few words, and tell it to the colleague another way "
                         "than the link (by phone).", field="passphrase")
    max_downloads = body.get("max_downloads")
    if max_downloads is not None and (isinstance(max_downloads, bool) or not isinstance(max_downloads, int)
                                      or not 1 <= max_downloads <= MAX_DOWNLOADS):
        raise BadRequest(f"field 'max_downloads' must be a whole number from 1 to {MAX_DOWNLOADS}, or null",
                         "Leave it out (or null) for no limit.", field="max_downloads")
    layout = body.get("layout", DICOMDIR)
    if layout not in LAYOUTS:
        raise BadRequest(f"field 'layout' must be one of {', '.join(LAYOUTS)}",
                         '"dicomdir" (default): a DICOMDIR that viewers open as a disc; "folders": readable '
                         "folder and file names.", field="layout")
    return ShareOptions(list(dict.fromkeys(series)), float(hours), label, passphrase, max_downloads, layout)


class ShareStore:
    """`shares.db` of one DataDirectory; safe to use from many threads (one connection per thread)."""

    def __init__(self, data_dir: str, clock: Callable[[], float] = time.time, engine: store.Engine | None = None):
        self.path = os.path.join(data_dir, SHARES_NAME)
        self.engine = engine or store.default_engine(data_dir)
        self.clock = clock
        self._connections = store.ThreadConnections(self.engine, "shares", MIGRATIONS)
        self._conn = self._connections.get

    # -- shares -----------------------------------------------------------------
    def create(self, series: Sequence[str], hours: float, label: str | None = None, *,
               passphrase: str | None = None, max_downloads: int | None = None,
               layout: str = DICOMDIR) -> tuple[Share, str]:
        """A new share and its token. The token is returned once and never stored; of the passphrase
        only its scrypt hash is (see `passphrase`)."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock()
        hashed = hash_passphrase(passphrase) if passphrase else None
        share = Share(secrets.token_hex(8), label, list(series), now, now + hours * 3600, None, hashed,
                      max_downloads, layout)
        self._conn().execute(
            "INSERT INTO shares(id, token_sha256, label, series, created_at, expires_at, passphrase_hash, "
            "max_downloads, layout) VALUES (?,?,?,?,?,?,?,?,?)",
            (share.id, hash_token(token), label, json.dumps(share.series), share.created_at, share.expires_at,
             hashed, max_downloads, layout))
        return share, token

    def create_from(self, options: ShareOptions) -> tuple[Share, str]:
        """`create` from a checked `POST /nas/shares` body."""
        return self.create(options.series, options.hours, options.label, passphrase=options.passphrase,
                           max_downloads=options.max_downloads, layout=options.layout)

    @staticmethod
    def check_passphrase(share: Share, passphrase: str) -> bool:
        """Whether `passphrase` opens `share` (slow by design: about 0.15 s)."""
        return share.passphrase_hash is not None and verify_passphrase(passphrase, share.passphrase_hash)

    def completed(self, share_id: str) -> int:
        """How many downloads of a share completed (the count `max_downloads` limits)."""
        return self._conn().execute("SELECT count(*) FROM audit WHERE share_id=? AND outcome=?",
                                    (share_id, COMPLETE)).fetchone()[0]

    def lookup(self, token: str) -> Share | None:
        """The share of a token, or None. Found by the token's hash, confirmed in constant time."""
        if not TOKEN_RE.match(token):
            return None
        digest = hash_token(token)
        row = self._conn().execute("SELECT * FROM shares WHERE token_sha256=?", (digest,)).fetchone()
        if row is None or not hmac.compare_digest(bytes(row["token_sha256"]), digest):
            return None
        return Share.from_row(row)

    def revoke(self, share_id: str) -> dict:
        """Revoke a share (again is fine: the first revocation time is kept); 404 if unknown."""
        self._conn().execute("UPDATE shares SET revoked_at=coalesce(revoked_at, ?) WHERE id=?",
                             (self.clock(), share_id))
        return self.describe(share_id)

    def _described(self, where: str = "", args: tuple = ()) -> list[dict]:
        rows = self._conn().execute(
            "SELECT s.*, count(a.id) AS downloads, max(a.finished_at) AS last_download_at FROM shares s "
            f"LEFT JOIN audit a ON a.share_id=s.id AND a.outcome=? {where} "
            "GROUP BY s.id ORDER BY s.created_at DESC, s.id", (COMPLETE, *args)).fetchall()
        return [{"id": row["id"], "label": row["label"], "series": json.loads(row["series"]),
                 "created_at": iso(row["created_at"]), "expires_at": iso(row["expires_at"]),
                 "revoked": row["revoked_at"] is not None, "downloads": row["downloads"],
                 "last_download_at": iso(row["last_download_at"]), "max_downloads": row["max_downloads"],
                 "passphrase": row["passphrase_hash"] is not None, "layout": row["layout"]} for row in rows]

    def describe(self, share_id: str) -> dict:
        """One share as `GET /nas/shares` answers it (never the token); 404 if unknown."""
        found = self._described("WHERE s.id=?", (share_id,))
        if not found:
            raise NotFound(f"no share with id {shown(share_id)}", "GET /nas/shares lists the shares.")
        return found[0]

    def list(self) -> list[dict]:
        """Every share, newest first, with the number of completed downloads."""
        return self._described()

    # -- audit ------------------------------------------------------------------
    def audit(self, client: str, share_id: str | None, outcome: str, detail: str | None = None) -> int:
        """Record one attempt; returns its row id (to finish it later for a download)."""
        return self._conn().execute(
            "INSERT INTO audit(at, client, share_id, outcome, detail) VALUES (?,?,?,?,?) RETURNING id",
            (self.clock(), client, share_id, outcome, detail)).fetchone()[0]

    def finish(self, audit_id: int, outcome: str, bytes_sent: int, detail: str | None = None) -> None:
        """Record how a download that was let through ended."""
        self._conn().execute("UPDATE audit SET outcome=?, detail=?, bytes_sent=?, finished_at=? WHERE id=?",
                             (outcome, detail, bytes_sent, self.clock(), audit_id))

    def audit_log(self, share_id: str | None = None, limit: int = 100) -> list[dict]:
        """The latest attempts, newest first (all shares, or one)."""
        where, args = ("WHERE share_id=?", (share_id,)) if share_id else ("", ())
        rows = self._conn().execute(f"SELECT * FROM audit {where} ORDER BY id DESC LIMIT ?", (*args, limit))
        return [dict(row) for row in rows]

    def completed_downloads(self) -> int:
        """How many downloads of any share ran to their end (for Orthanc's metrics)."""
        return self._conn().execute("SELECT count(*) FROM audit WHERE outcome=?", (COMPLETE,)).fetchone()[0]

    def close(self) -> None:
        self._connections.close()


class BadTokenLimiter:
    """Refuses an address that sent too many wrong links lately (429), so tokens cannot be guessed at speed.

    A sliding window per client address, in memory: after `limit` wrong links
    within `window` seconds the address is refused until the oldest of them
    leaves the window. Refused attempts do not count, so someone who stops
    retrying gets back in. At most `max_clients` addresses are remembered
    (the least recently seen are forgotten first), so memory stays bounded.
    """

    def __init__(self, limit: int = 10, window: float = 600.0, max_clients: int = 10_000,
                 clock: Callable[[], float] = time.monotonic):
        self.limit, self.window, self.max_clients, self.clock = limit, window, max_clients, clock
        self._misses: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float] | None:
        misses = self._misses.get(client)
        if misses is not None:
            while misses and misses[0] <= now - self.window:
                misses.popleft()
            if not misses:
                del self._misses[client]
                return None
        return misses

    def retry_after(self, client: str) -> int:
        """Seconds until `client` may try again; 0 if it is not refused."""
        with self._lock:
            now = self.clock()
            misses = self._recent(client, now)
            if misses is None or len(misses) < self.limit:
                return 0
            return max(1, math.ceil(misses[-self.limit] + self.window - now))

    def miss(self, client: str) -> bool:
        """Count a wrong link from `client`; True when this one makes it refused."""
        with self._lock:
            now = self.clock()
            misses = self._recent(client, now)
            if misses is None:
                misses = self._misses[client] = deque(maxlen=self.limit)
                while len(self._misses) > self.max_clients:
                    self._misses.popitem(last=False)
            self._misses.move_to_end(client)
            misses.append(now)
            return len(misses) >= self.limit
