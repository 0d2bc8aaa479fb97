"""Passphrases of share links: kept only as a slow, salted scrypt hash (RFC 7914, `hashlib.scrypt`).

A stored hash reads `scrypt$<log2 N>$<r>$<p>$<salt>$<key>` (salt and key in
URL-safe base64), so the cost can be raised later without breaking older links.
N = 2^15, r = 8, p = 1 takes 32 MiB and about 0.15 s of one core here: slow for a
guesser with a copy of `shares.db`, bearable for 8 download threads inside Orthanc;
guesses through the listener are also refused after a few (the 429 limiter).

Passphrases are compared as Unicode NFC, so an accented letter typed on another
keyboard (composed or not) still matches.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata

LOG2_N, R, P = 15, 8, 1
SALT_BYTES, KEY_BYTES = 16, 32
MAXMEM = 64 * 1024 * 1024  # scrypt needs 128 * N * r bytes (32 MiB); OpenSSL's default cap is exactly that
MIN_LENGTH, MAX_LENGTH = 6, 200


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _derive(passphrase: str, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    secret = unicodedata.normalize("NFC", passphrase).encode("utf-8")
    return hashlib.scrypt(secret, salt=salt, n=1 << log2_n, r=r, p=p, maxmem=MAXMEM, dklen=length)


def hash_passphrase(passphrase: str) -> str:
    """The string to store for `passphrase` (a fresh random salt each time)."""
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(passphrase, salt, LOG2_N, R, P, KEY_BYTES)
    return f"scrypt${LOG2_N}${R}${P}${_b64(salt)}${_b64(key)}"


def verify_passphrase(passphrase: str, stored: str) -> bool:
    """Whether `passphrase` matches a hash made by `hash_passphrase` (compared in constant time).

    An unreadable stored value matches nothing.
    """
    try:
        scheme, log2_n, r, p, salt, key = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(key)
        got = _derive(passphrase, _unb64(salt), int(log2_n), int(r), int(p), len(expected))
    except (ValueError, TypeError, MemoryError):
        return False
    return hmac.compare_digest(got, expected)
