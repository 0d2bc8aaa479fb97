"""The pages of the share listener for a person with a browser: what a link holds, and why one does not work.

Pages are small HTML documents made here, every value HTML-escaped (names
come from the files), styled by `share_page.css` inlined and allowed by its
hash in a Content-Security-Policy that allows nothing else: no script, no
font, no image, forms only to the listener itself. They work without
JavaScript and fit a phone's screen. Times are given in UTC (a page without
script cannot know the reader's time zone) and as a duration.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

CSS = (Path(__file__).with_name("share_page.css")).read_text(encoding="utf-8")
_CSS_HASH = base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode("ascii")
#: what a page may use: its own inline style, forms posted to the listener; nothing else
CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")
PAGE_HEADERS = [("Content-Type", "text/html; charset=utf-8"), ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                ("X-Frame-Options", "DENY")]
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
DICOMDIR_NOTE = ("The zip holds a DICOMDIR: unpack it and open the folder in a DICOM viewer (Weasis, Horos, "
                 "RadiAnt, OsiriX…) as you would a CD.")
FOLDERS_NOTE = "The zip holds the DICOM files in one folder per series."


def wants_page(environ: Mapping) -> bool:
    """A browser asks for HTML (`Accept` names text/html); curl, wget and scripts do not."""
    return "text/html" in environ.get("HTTP_ACCEPT", "").lower()


# -- values as a person reads them ------------------------------------------------------
def person_name(value: str | None) -> str:
    """A DICOM person name (PS3.5 6.2: `Family^Given^Middle^Prefix^Suffix`, groups split by `=`) as text:
    the first group, its components in order, separated by spaces."""
    if not value:
        return ""
    first = next((g for g in value.split("=") if g.strip("^ ")), "")
    return " ".join(part.strip() for part in first.split("^") if part.strip())


def dicom_date(value: str | None) -> str:
    """`YYYYMMDD` as `2 January 2024`; anything else as it is."""
    if value and len(value) == 8 and value.isdigit() and 1 <= int(value[4:6]) <= 12:
        return f"{int(value[6:])} {MONTHS[int(value[4:6]) - 1]} {value[:4]}"
    return value or ""


def utc_time(seconds: float) -> str:
    t = time.gmtime(seconds)
    return f"{t.tm_mday} {MONTHS[t.tm_mon - 1]} {t.tm_year}, {t.tm_hour:02d}:{t.tm_min:02d} UTC"


def duration(seconds: float) -> str:
    """`3 days 4 hours`, `5 hours 10 minutes`, `12 minutes`, `less than a minute`."""
    minutes = int(seconds // 60)
    days, hours, minutes = minutes // 1440, minutes // 60 % 24, minutes % 60
    parts = [(days, "day"), (hours, "hour")] if days else [(hours, "hour"), (minutes, "minute")]
    words = [f"{n} {unit}{'s' if n != 1 else ''}" for n, unit in parts if n]
    return " ".join(words) or "less than a minute"


def size(count: int) -> str:
    """Bytes in decimal units, as file managers show them: `980 bytes`, `12.3 MB`, `1.52 GB`."""
    if count < 1000:
        return f"{count} bytes"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12)):
        if count < scale * 1000 or unit == "TB":
            value = count / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


# -- what a share holds ---------------------------------------------------------------------
@dataclass(frozen=True)
class SeriesSummary:
    row: Mapping  # the series row of the index
    files: int
    size: int


def summarize(catalog, keys: Sequence[str]) -> list[SeriesSummary]:
    """The series of a share that are still indexed, in the share's order, with their readable files' count
    and size."""
    rows = catalog.series_rows(keys)
    totals: dict[str, tuple[int, int]] = {}
    keys = list(keys)
    for start in range(0, len(keys), 500):
        chunk = keys[start:start + 500]
        marks = ",".join("?" * len(chunk))
        for key, count, total in catalog.reader().execute(
                f"SELECT series_key, count(*), coalesce(sum(size), 0) FROM files WHERE series_key IN ({marks}) "
                "AND error IS NULL GROUP BY series_key", chunk):
            totals[key] = (count, total)
    return [SeriesSummary(rows[k], *totals.get(k, (0, 0))) for k in keys if k in rows]


# -- pages ------------------------------------------------------------------------------------
def _document(title: str, body: str) -> bytes:
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="referrer" content="no-referrer"><meta name="robots" content="noindex">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n"
            f'<body><header class="bar"><h1>Shared images</h1></header>\n<main>{body}</main></body></html>\n'
            ).encode()


def _study_card(study: list[SeriesSummary]) -> str:
    first = study[0].row
    facts = [("Patient ID", first["PatientID"]), ("Birth date", dicom_date(first["PatientBirthDate"])),
             ("Study date", dicom_date(first["StudyDate"])), ("Study", first["StudyDescription"]),
             ("Accession number", first["AccessionNumber"])]
    rows = "".join(
        f'<tr><td class="num">{escape(str(s.row["SeriesNumber"]) if s.row["SeriesNumber"] is not None else "")}</td>'
        f'<td>{escape(s.row["SeriesDescription"] or "")}</td><td>{escape(s.row["Modality"] or "")}</td>'
        f'<td class="num">{s.files}</td><td class="num hide-narrow">{escape(size(s.size))}</td></tr>'
        for s in study)
    return (f'<section class="card study"><h2>{escape(person_name(first["PatientName"]) or "Unnamed patient")}</h2>'
            '<dl class="facts">' + "".join(f"<dt>{escape(k)}</dt><dd>{escape(str(v))}</dd>" for k, v in facts if v)
            + '</dl><div class="table-wrap"><table><thead><tr><th class="num">#</th><th>Series</th><th>Modality</th>'
            f'<th class="num">Files</th><th class="num hide-narrow">Size</th></tr></thead><tbody>{rows}</tbody>'
            "</table></div></section>")


def share_page(token: str, series: Sequence[SeriesSummary], *, expires_at: float, now: float,
               downloads_left: int | None, layout_note: str) -> bytes:
    """The page of a valid link: each study (patient, dates, description) with its series (number,
    description, modality, files, size), the total, the expiry and the Download button."""
    studies: dict[tuple, list[SeriesSummary]] = {}
    for s in series:
        studies.setdefault((s.row["PatientID"], s.row["StudyInstanceUID"]), []).append(s)
    files, total = sum(s.files for s in series), sum(s.size for s in series)
    left = ""
    if downloads_left is not None:
        left = (f"<p>This link can be downloaded <strong>{downloads_left} more time"
                f"{'s' if downloads_left != 1 else ''}</strong>.</p>")
    summary = (
        '<section class="card download">'
        f'<p class="total">{len(series)} series, <strong>{files} file{"s" if files != 1 else ""}</strong>, '
        f"<strong>{escape(size(total))}</strong></p>"
        f'<p>The link works until <strong><time datetime="{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))}">'
        f"{escape(utc_time(expires_at))}</time></strong> (in {escape(duration(expires_at - now))}).</p>{left}"
        f'<a class="btn btn-yellow" id="download" href="{escape(token)}/download">Download</a>'
        f'<p class="muted">{escape(layout_note)}</p></section>')
    return _document("Shared images", "".join(_study_card(s) for s in studies.values()) + summary)


def passphrase_page(token: str, *, wrong: bool = False) -> bytes:
    """The form that asks for a link's passphrase; posts to the listener itself (the same address)."""
    error = ('<p class="message error" role="alert">This is not the passphrase of this link. Check it with the '
             "sender.</p>") if wrong else ""
    return _document("Passphrase", (
        '<section class="card"><h2>This link is protected by a passphrase</h2>'
        "<p>The sender will have told you the passphrase another way than the link, for example by phone.</p>"
        f'{error}<form method="post" action="{escape(token)}">'
        '<label for="passphrase">Passphrase</label>'
        '<input type="password" id="passphrase" name="passphrase" required autofocus autocomplete="off">'
        '<button type="submit" class="btn btn-blue">Open</button></form></section>'))


def refusal_page(title: str, text: str, hint: str) -> bytes:
    """A link that does not work: what is wrong and what to do."""
    return _document(title, f'<section class="card"><h2>{escape(title)}</h2><p>{escape(text)}</p>'
                            f'<p class="muted">{escape(hint)}</p></section>')
