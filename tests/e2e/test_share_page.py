"""The page of a share link in headless Chromium, with JavaScript off, against a real Orthanc's share listener.

What a colleague sees: what is shared, until when, the Download button; the pages of expired, revoked,
used-up and unknown links; the passphrase form (wrong, then right); on a phone's screen. And the panel's
share dialog, which offers the passphrase, the limit of downloads and the zip's layout.
"""

from __future__ import annotations

import io
import re
import secrets
import time
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from playwright.sync_api import Page, expect
from tests.support.dicom import write_series
from tests.support.orthanc import PASSWORD, USER, OrthancServer, free_port

from orthanc_nas.catalog import series_key

pytestmark = pytest.mark.e2e

PHONE = {"width": 360, "height": 740}
HOSTILE = "<script>alert(1)</script>^<i>Jo</i>"  # no `=`: it would start the name's ideographic group


def _series(folder: Path, count: int, **attrs) -> tuple[str, list[Path]]:
    uid = attrs.setdefault("SeriesInstanceUID", f"2.25.{secrets.randbits(64)}")
    return series_key({"SeriesInstanceUID": uid}, ""), write_series(folder, count, **attrs)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("share-page-nas")
    study = {"StudyInstanceUID": f"2.25.{secrets.randbits(64)}", "PatientName": "Müller^Jürgen", "PatientID": "DE-1001",
             "charset": "ISO_IR 192", "StudyDate": "20240315", "StudyDescription": "MRT Knie rechts", "Modality": "MR"}
    return {
        "root": root,
        "t1": _series(root / "knee" / "t1", 5, SeriesDescription="T1 sagittal", SeriesNumber=1, pixel_bytes=30_000,
                      **study),
        "pd": _series(root / "knee" / "pd", 3, SeriesDescription="PD fs coronal", SeriesNumber=2, pixel_bytes=30_000,
                      **study),
        "hostile": _series(root / "hostile", 2, PatientName=HOSTILE, StudyDescription='<b>bold</b> & <img src=x onerror="alert(2)">',
                           SeriesDescription='"><a href="https://example.org/">x</a>', charset="ISO_IR 192"),
    }


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory, corpus):
    work = tmp_path_factory.mktemp("share-page-orthanc")
    server = OrthancServer(work, nas={"Connection": {"Type": "local", "Path": str(corpus["root"])},
                                      "DataDirectory": str(work / "nasdata"), "ShareServer": {"Port": free_port()}},
                           auth=True)
    server.start()
    assert server.index()["phase"] == "done"
    yield server
    server.stop()


@pytest.fixture
def colleague(browser):
    """A browser without Orthanc credentials and with JavaScript off: the page must work without it."""
    context = browser.new_context(viewport=PHONE, java_script_enabled=False, locale="en-GB", accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(15_000)
    outside: list[str] = []
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith("http://127.0.0.1:") else None)
    page.outside = outside
    yield page
    context.close()


def create(orthanc: OrthancServer, keys: list[str], **body) -> dict:
    answer = orthanc.post("/nas/shares", json={"series": keys, **body})
    assert answer.status_code == 201, answer.text
    return answer.json()


def fits_the_screen(page: Page) -> None:
    """Nothing reaches past the right edge of a phone's screen."""
    for part in ("main", "section.study table", "#download"):
        box = page.locator(part).first.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (part, box)


def download(page: Page) -> bytes:
    with page.expect_download() as event:
        page.get_by_role("link", name="Download").click()
    return Path(event.value.path()).read_bytes()


def zip_contents(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None
        return {name: archive.read(name) for name in archive.namelist()}


def test_the_page_of_a_link_shows_what_is_shared_until_when_and_downloads_it(orthanc, corpus, colleague,
                                                                              screenshots):
    t1, pd = corpus["t1"], corpus["pd"]
    share = create(orthanc, [t1[0], pd[0]], expires_in_hours=30, layout="folders")
    answer = colleague.goto(share["url"])
    assert answer.status == 200 and answer.headers["content-type"] == "text/html; charset=utf-8"
    policy = answer.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src" not in policy and "unsafe-inline" not in policy
    assert answer.headers["cache-control"] == "no-store" and answer.headers["referrer-policy"] == "no-referrer"

    card = colleague.locator("section.study")
    expect(card.get_by_role("heading")).to_have_text("Müller Jürgen")
    expect(card).to_contain_text("DE-1001")
    expect(card).to_contain_text("15 March 2024")
    expect(card).to_contain_text("MRT Knie rechts")
    rows = card.locator("tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0).locator("td")).to_have_text(["1", "T1 sagittal", "MR", "5", re.compile(r"kB$")])
    expect(rows.nth(1).locator("td")).to_have_text(["2", "PD fs coronal", "MR", "3", re.compile(r"kB$")])
    total = sum(f.stat().st_size for f in t1[1] + pd[1])
    summary = colleague.locator("section.download")
    expect(summary).to_contain_text(f"2 series, 8 files, {total / 1000:.0f} kB")
    expires = time.gmtime(time.mktime(time.strptime(share["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone)
    expect(summary.locator("time")).to_have_attribute("datetime", share["expires_at"])
    expect(summary.locator("time")).to_contain_text(f"{expires.tm_mday} ")
    expect(summary.locator("time")).to_contain_text(f"{expires.tm_hour:02d}:{expires.tm_min:02d} UTC")
    expect(summary).to_contain_text(re.compile(r"\(in 1 day (5|6) hours\)"))
    expect(summary).to_contain_text("one folder per series")
    fits_the_screen(colleague)
    screenshots(colleague, "share-page-phone")

    got = zip_contents(download(colleague))
    assert got == {f"{n}_{d}/{f.name}": f.read_bytes()
                   for (n, d, files) in [(1, "T1_sagittal", t1[1]), (2, "PD_fs_coronal", pd[1])] for f in files}
    assert not colleague.outside, colleague.outside


def test_names_from_files_are_shown_as_text_never_as_markup(orthanc, corpus, colleague):
    share = create(orthanc, [corpus["hostile"][0]])
    colleague.goto(share["url"])
    expect(colleague.locator("section.study h2")).to_have_text(
        "<script>alert(1)</script> <i>Jo</i>")
    expect(colleague.locator("section.study")).to_contain_text('<b>bold</b> & <img src=x onerror="alert(2)">')
    expect(colleague.locator("section.study td").nth(1)).to_have_text('"><a href="https://example.org/">x</a>')
    assert colleague.locator("script, img, b, i, a[href^='https:']").count() == 0


def test_expired_revoked_used_up_and_unknown_links_say_which(orthanc, corpus, colleague, screenshots):
    key = corpus["pd"][0]
    expired = create(orthanc, [key], expires_in_hours=1 / 3600)
    revoked = create(orthanc, [key])
    assert orthanc.delete(f"/nas/shares/{revoked['id']}").status_code == 200
    used = create(orthanc, [key], max_downloads=1)
    colleague.goto(used["url"])
    expect(colleague.locator("section.download")).to_contain_text("downloaded 1 more time.")
    download(colleague)
    time.sleep(1.2)  # the expired link's second has passed
    unknown = f"{urlsplit(used['url']).scheme}://{urlsplit(used['url']).netloc}/share/{secrets.token_urlsafe(32)}"
    for name, url, status, title in [
        ("expired", expired["url"], 410, "This link has expired"),
        ("revoked", revoked["url"], 410, "This link was revoked"),
        ("used-up", used["url"], 410, "This link is used up"),
        ("unknown", unknown, 404, "This link is not valid"),
    ]:
        answer = colleague.goto(url)
        assert answer.status == status, name
        expect(colleague.get_by_role("heading", level=2)).to_have_text(title)
        expect(colleague.get_by_role("link", name="Download")).to_have_count(0)
        screenshots(colleague, name)
    # the zip's own address refuses the same way
    answer = colleague.goto(used["url"] + "/download")
    assert answer.status == 410
    expect(colleague.get_by_role("heading", level=2)).to_have_text("This link is used up")


def test_the_passphrase_form_wrong_then_right(orthanc, corpus, colleague, screenshots):
    t1 = corpus["t1"]
    share = create(orthanc, [t1[0]], passphrase="correct horse battery", layout="folders")
    answer = colleague.goto(share["url"])
    assert answer.status == 401 and "www-authenticate" not in answer.headers  # no browser login box
    expect(colleague.get_by_role("heading", level=2)).to_have_text("This link is protected by a passphrase")
    expect(colleague.locator("body")).not_to_contain_text("Müller")  # nothing shown before the passphrase
    screenshots(colleague, "passphrase-asked")

    colleague.get_by_label("Passphrase").fill("correct horse")
    with colleague.expect_navigation():
        colleague.get_by_role("button", name="Open").click()
    expect(colleague.locator("[role=alert]")).to_contain_text("not the passphrase")
    expect(colleague.locator("body")).not_to_contain_text("Müller")
    screenshots(colleague, "passphrase-wrong")

    colleague.get_by_label("Passphrase").fill("correct horse battery")
    with colleague.expect_navigation():
        colleague.get_by_role("button", name="Open").click()
    assert urlsplit(colleague.url).path == urlsplit(share["url"]).path  # back on the link's own address
    expect(colleague.locator("section.study h2")).to_have_text("Müller Jürgen")
    screenshots(colleague, "passphrase-right")
    assert zip_contents(download(colleague)) == {f"1_T1_sagittal/{f.name}": f.read_bytes() for f in t1[1]}
    colleague.reload()  # the passphrase is remembered for this link, not posted again
    expect(colleague.locator("section.study h2")).to_have_text("Müller Jürgen")

    # the zip's own address, opened first, asks too; the form leads to the page
    fresh = colleague.context.browser.new_context(viewport=PHONE, java_script_enabled=False)
    try:
        page = fresh.new_page()
        assert page.goto(share["url"] + "/download").status == 401
        page.get_by_label("Passphrase").fill("correct horse battery")
        with page.expect_navigation():
            page.get_by_role("button", name="Open").click()
        assert urlsplit(page.url).path == urlsplit(share["url"]).path
        expect(page.locator("section.study h2")).to_have_text("Müller Jürgen")
    finally:
        fresh.close()

    # another link with the same passphrase is not opened by this one's cookie
    other = create(orthanc, [t1[0]], passphrase="correct horse battery")
    assert colleague.goto(other["url"]).status == 401
    assert requests.get(other["url"] + "/download", timeout=30).status_code == 401


def test_the_panel_offers_passphrase_download_limit_and_layout(orthanc, corpus, browser):
    context = browser.new_context(http_credentials={"username": USER, "password": PASSWORD})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        page.goto(f"{orthanc.url}/nas/app/index.html#search")
        page.locator("#q").fill("muller")
        page.locator("#q").press("Enter")
        row = page.locator("#results tbody tr", has_text="T1 sagittal")
        row.get_by_role("button", name="Share").click()
        dialog = page.locator("#share-dialog")
        expect(dialog.locator("#share-layout")).to_have_value("dicomdir")
        dialog.get_by_label("Passphrase").fill("told by phone")
        dialog.get_by_label("Downloads").select_option(label="once")
        dialog.get_by_label("Zip holds").select_option("folders")
        dialog.get_by_role("button", name="Create link").click()
        expect(dialog.locator("#share-result")).to_contain_text("1 time, with the passphrase you chose")
        url = dialog.locator("#share-url").input_value()
        dialog.get_by_role("button", name="Close").click()
        listed = [s for s in orthanc.get("/nas/shares").json() if s["series"] == [corpus["t1"][0]]][0]
        assert (listed["passphrase"], listed["max_downloads"], listed["layout"]) == (True, 1, "folders")
        assert requests.get(url, timeout=30).status_code == 401
        answer = requests.get(url, auth=("", "told by phone"), timeout=30)
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/zip"

        page.get_by_role("link", name="Shares").click()
        share_row = page.locator("#shares tbody tr").first
        expect(share_row.locator("td").nth(4)).to_have_text("1 of 1")
        expect(share_row.locator("td").nth(5)).to_have_text("yes")
        expect(share_row.locator(".state")).to_have_text("used up")
    finally:
        context.close()
