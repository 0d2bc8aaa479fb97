"""File and folder names that are not valid UTF-8, kept and shown.

An old NAS, or a copy from a Windows-1252 machine, leaves names in Latin-1 bytes (`K\\xf6ln`). Python's
`os` functions give such a name as a `str` holding the undecodable bytes as lone surrogates (PEP 383,
`surrogateescape`): opening that `str` opens the file, but it cannot be encoded as UTF-8, so SQLite,
JSON and Orthanc's log refuse it. Here:

- `stored`: what the index keeps: the path as text when it is valid UTF-8 (every usual name, unchanged),
  its raw bytes (`RawPath`) otherwise, so the file can be opened again from the index (zips, retrievals).
  SQLite keeps the bytes as a BLOB; PostgreSQL's text column keeps an escaped text form of them
  (`store_dialects.path_text`: each undecodable byte as `MARK` and a private-use character), which reads back
  exactly. A name holding `MARK` itself (never seen on a NAS) is kept raw too, so the form is never
  ambiguous;
- `loaded`: the path again from what the index holds (raw bytes, or PostgreSQL's escaped form);
- `escaped`: the path for people (JSON answers, the status file, the log): valid UTF-8, the undecodable
  bytes escaped as `\\xNN`.
"""

from __future__ import annotations

#: the escape character of PostgreSQL's text form of a raw path (a private-use character of plane 16)
MARK = "\U0010fffd"


class RawPath(bytes):
    """A path's raw bytes, as the index keeps a name that is not UTF-8 (see `store` for PostgreSQL)."""


def stored(path: str) -> str | RawPath:
    """The value the index keeps for `path`: the text itself, or its raw bytes when it is not UTF-8 (or
    holds `MARK`). UnicodeEncodeError for a lone surrogate no file system name gives."""
    if path.isascii():
        return path
    try:
        path.encode("utf-8")
        if MARK not in path:
            return path
    except UnicodeEncodeError:
        pass
    return RawPath(path.encode("utf-8", "surrogateescape"))


def loaded(value: str | bytes) -> str:
    """A path from the index, as `os` functions take it."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if MARK in value:  # PostgreSQL's text form of a raw path
        from .store_dialects import path_from_text

        return path_from_text(value)
    return value


def escaped(text: str) -> str:
    """`text` (a path, or a message naming one) as valid UTF-8, undecodable bytes escaped as `\\xNN`."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # other lone surrogates (not from a file system name)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
