"""The NAS panel in headless Chromium against a real Orthanc: what a radiologist does, step by step.

Open Orthanc Explorer, click NAS, fill in the connection (first wrong, then right), test it, save,
index and watch the bar reach done, stop a second run, search a name with an accent typed without it, open a series,
share it, download the link without credentials, revoke it. Once with the NAS reached directly over
SMB (a real smbd), once as a mounted folder. Each step leaves a screenshot in test-artifacts/e2e/;
with UPDATE_SCREENSHOTS=1 the README's picture (docs/panel.png) is taken anew.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from playwright.sync_api import Page, expect
from tests.support.browser import SCREEN
from tests.support.dicom import write_series
from tests.support.orthanc import REPO, OrthancServer, free_port
from tests.support.smbd import SambaServer, make_share_dir

pytestmark = pytest.mark.e2e

BIG = 3000  # files of one series: indexing then lasts long enough for the bar to be seen moving
# (folder, files, attributes): several patients and character sets
CORPUS = [
    ("muller/mr-knee/t1", 12, dict(PatientName="Müller^Jürgen", PatientID="DE-1001", charset="ISO_IR 100",
                                   Modality="MR", StudyDate="20240315", StudyDescription="MRT Knie rechts",
                                   SeriesDescription="T1 sagittal", SeriesNumber=1)),
    ("muller/mr-knee/pd", 10, dict(PatientName="Müller^Jürgen", PatientID="DE-1001", charset="ISO_IR 100",
                                   Modality="MR", StudyDate="20240315", StudyDescription="MRT Knie rechts",
                                   SeriesDescription="PD fs coronal", SeriesNumber=2)),
    ("doe/ct-thorax", BIG, dict(PatientName="DOE^JOHN", PatientID="US-0042", Modality="CT", StudyDate="20240316",
                                StudyDescription="CT THORAX", SeriesDescription="Lung 1.0 axial")),
    ("doe/cr", 2, dict(PatientName="DOE^JOHN", PatientID="US-0042", Modality="CR", StudyDate="20231102",
                       StudyDescription="CHEST", SeriesDescription="PA and lateral")),
    ("garcia", 8, dict(PatientName="García Márquez^José Luis", PatientID="ES-77", charset="ISO_IR 192",
                       Modality="CT", StudyDate="20231201", StudyDescription="TC CRÁNEO",
                       SeriesDescription="Axial cerebro")),
    ("obrien", 4, dict(PatientName="O'BRIEN^ANNE", PatientID="IE-5", Modality="US", StudyDate="20240102",
                       StudyDescription="US ABDOMEN", SeriesDescription="Liver")),
]
FILES = sum(count for _, count, _ in CORPUS)


def write_corpus(root: Path) -> Path:
    for folder, count, attrs in CORPUS:
        write_series(root / folder, count, **attrs)
    (root / "doe" / "scanned request.pdf").write_bytes(b"%PDF-1.4 not a DICOM file")
    return root


@pytest.fixture(scope="module")
def nas_folder(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("e2e-nas"))


@pytest.fixture(scope="module")
def samba():
    """The same files on a real Samba server (nasuser/secret on loopback)."""
    share = Path(make_share_dir("nas-e2e-share-"))
    server = SambaServer(str(write_corpus(share))).start()
    yield server
    server.cleanup()
    shutil.rmtree(share, ignore_errors=True)


@dataclass
class Target:
    """How the NAS is entered in the connection form: right, and wrong in a way a person makes."""

    fill_right: Callable[[Page], None]
    fill_wrong: Callable[[Page], None]
    wrong_title: str  # the heading the panel shows for the wrong entry
    description: str  # how the log names the saved connection
    readme_picture: bool = False  # this run takes docs/panel.png when UPDATE_SCREENSHOTS=1


def local_target(root) -> Target:
    def fill(path):
        def fill_form(page: Page) -> None:
            page.get_by_label("A folder of this server").check()
            page.locator("#f-Path-local").fill(str(path))
        return fill_form

    return Target(fill(root), fill(f"{root}-not-mounted"), "Not found", f"folder {root}")


def smb_target(samba: SambaServer) -> Target:
    def fill(password):
        def fill_form(page: Page) -> None:
            page.get_by_label("A share on the NAS").check()
            page.get_by_label("NAS host").fill(samba.host)
            page.get_by_label("Port").fill(str(samba.port))
            page.get_by_role("textbox", name="Share", exact=True).fill(samba.share)
            page.get_by_label("User name").fill(samba.user)
            page.get_by_label("Password").fill(password)
        return fill_form

    return Target(fill(samba.password), fill("not-the-password"), "The NAS refused the user name or password",
                  f"//{samba.host}:{samba.port}/{samba.share}", readme_picture=True)


@pytest.fixture
def orthanc(tmp_path):
    """An Orthanc without a NAS connection yet: the panel is where it is set up."""
    server = OrthancServer(tmp_path / "orthanc", nas={"ShareServer": {"Port": free_port()}})
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("nas", ["smb", "local"])
def test_a_radiologist_sets_up_indexes_searches_and_shares(request, page, orthanc, nas, screenshots):
    """The whole flow, with the NAS reached directly over SMB, and as a mounted (local) folder."""
    if nas == "smb":
        target = smb_target(request.getfixturevalue("samba"))
    else:
        target = local_target(request.getfixturevalue("nas_folder"))
    run_the_panel(page, orthanc, target, screenshots)


def run_the_panel(page: Page, orthanc: OrthancServer, target: Target, shot) -> None:
    outside, problems = [], []
    page.on("request", lambda r: None if r.url.startswith(orthanc.url) else outside.append(r.url))
    # errors of the page's own code or of its policy; an answer with an error status is logged by the
    # browser too ("Failed to load resource"), and the test causes those on purpose
    page.on("console", lambda m: problems.append(m.text) if m.type == "error"
            and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    # Orthanc Explorer's home page has the NAS button; it opens the panel, on the connection form
    page.goto(f"{orthanc.url}/app/explorer.html")
    expect(page.locator("#nas-open-panel")).to_be_visible()
    shot(page, "explorer-home")
    page.locator("#nas-open-panel").click()
    expect(page).to_have_url(re.compile(r"/nas/app/index\.html#connection$"))
    expect(page.locator("#tab-connection")).to_be_visible()
    shot(page, "connection-empty")

    # a wrong entry: the error in words, with what to do
    target.fill_wrong(page)
    page.get_by_role("button", name="Test connection").click()
    message = page.locator("#connection-message")
    expect(message).to_have_class(re.compile("error"))
    expect(message.locator(".title")).to_have_text(target.wrong_title)
    expect(message.locator(".hint")).not_to_be_empty()
    shot(page, "test-wrong")

    # the right one: the top folder of the NAS is listed
    target.fill_right(page)
    page.get_by_role("button", name="Test connection").click()
    expect(message.locator(".title")).to_have_text("Connection works.")
    expect(page.locator("#listing li", has_text="muller/")).to_be_visible()
    shot(page, "test-right")

    page.get_by_role("button", name="Save").click()
    expect(message.locator(".title")).to_have_text("Saved.")
    saved = orthanc.get("/nas/config").json()["Connection"]
    assert "Password" not in saved
    if saved["Type"] == "smb":  # the password is gone from the form, which says one is saved
        expect(page.locator("#f-Password")).to_have_value("")
        expect(page.locator("#f-Password")).to_have_attribute("placeholder", "saved (leave empty to keep it)")
    assert target.description in orthanc.log()  # "NAS connection saved from the web: ..."
    shot(page, "saved")

    # indexing: the bar moves and reaches done; the file that is not DICOM is among the errors
    page.get_by_role("link", name="Next: index the NAS").click()
    page.get_by_role("button", name="Index now").click()
    label = page.locator("#progress-label")
    seen = []
    deadline = time.monotonic() + 120
    while "finished" not in (page.locator("#phase").text_content() or "") and time.monotonic() < deadline:
        seen.append(label.text_content())
        page.wait_for_timeout(100)
    expect(label).to_have_text(f"{FILES + 1:,} of {FILES + 1:,} files · 100 %")
    # Refreshed live, without reloading: the bar showed the run going on before it showed it done. (How
    # many steps are seen depends on the machine: a loaded one answers the polls late.)
    going_on = {text for text in seen if text == "Looking for files…"
                or re.fullmatch(r"[\d,]+ of (at least )?[\d,]+ files · \d+ %", text or "")}
    assert going_on - {label.text_content()}, f"the bar was not seen between start and end: {set(seen)}"
    expect(page.locator("#st-series")).to_have_text(str(len(CORPUS)))
    expect(page.locator("#st-errors")).to_have_text("1")
    page.get_by_text("Show the files that could not be read").click()
    expect(page.locator("#error-samples")).to_contain_text("doe/scanned request.pdf")
    expect(page.get_by_role("button", name="Index now")).to_be_enabled()
    page.wait_for_timeout(500)  # the bar's last stretch is animated
    shot(page, "indexing-done")

    # reading everything again can be stopped; the index stays as it was
    page.get_by_label("Read every file again").check()
    page.get_by_role("button", name="Index now").click()
    page.get_by_role("button", name="Stop").click()  # enabled as soon as the run shows as running
    expect(page.locator("#phase")).to_contain_text("Indexing was stopped.")
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    page.wait_for_timeout(500)  # the bar's animation
    shot(page, "indexing-stopped")
    page.get_by_label("Read every file again").uncheck()

    # search: "muller" finds Müller; a filter narrows; everything is listed without words
    page.get_by_role("link", name="Search", exact=True).click()
    page.locator("#q").fill("muller")
    page.locator("#q").press("Enter")
    rows = page.locator("#results tbody tr[data-key]")
    expect(rows).to_have_count(2)
    expect(rows.first.locator("td.patient")).to_have_text("Müller, Jürgen")
    expect(page.locator("#result-count")).to_have_text("2 series found.")
    shot(page, "search-muller")

    page.locator("#q").fill("")
    page.locator("#modality").select_option("CT")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(rows).to_have_count(2)
    page.locator("#modality").select_option("")
    page.locator("#page-size").select_option("25")
    expect(rows).to_have_count(len(CORPUS))
    rows.filter(has_text="T1 sagittal").locator("input[type=checkbox]").check()
    rows.filter(has_text="PD fs coronal").locator("input[type=checkbox]").check()
    expect(page.locator("#share-selected")).to_have_text("Share 2 selected series")
    path = shot(page, "search-all")
    if target.readme_picture and os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, REPO / "docs" / "panel.png")

    # a selection is shared in one link
    page.locator("#share-selected").click()
    dialog = page.locator("#share-dialog")
    expect(dialog.locator("#share-series li")).to_have_count(2)
    dialog.get_by_role("button", name="Create link").click()
    expect(dialog.locator("#share-url")).to_have_value(re.compile(r"/share/[A-Za-z0-9_-]{43}$"))
    assert len(zip_names(dialog.locator("#share-url").input_value())) == 22 + 1  # and the DICOMDIR
    dialog.get_by_role("button", name="Close").click()

    # one series and its files
    rows.filter(has_text="Lung 1.0 axial").locator("td.patient").click()
    series = page.locator("#series-dialog")
    files = series.locator("#series-files tbody tr")
    expect(files).to_have_count(2001)  # the panel lists 2,000 files, then says how many more there are
    expect(files.first).to_contain_text("doe/ct-thorax/IM00001.dcm")
    expect(files.last).to_have_text(f"… and {BIG - 2000:,} more files.")
    shot(page, "series")

    # its share link: default 24 h, shown once, downloads without credentials
    series.get_by_role("button", name="Share this series").click()
    expect(dialog.locator("#share-expiry")).to_have_value("24")
    dialog.locator("#share-label").fill("for Dr. Martin, second opinion")
    dialog.get_by_role("button", name="Create link").click()
    expect(dialog.locator("#share-result")).to_be_visible()
    url = dialog.locator("#share-url").input_value()
    assert urlsplit(url).path.startswith("/share/")
    dialog.get_by_role("button", name="Copy").click()
    expect(dialog.locator("#share-copied")).not_to_be_empty()
    shot(page, "share-link")
    names = zip_names(url)  # the default layout: a DICOMDIR and the files under DICOM File IDs
    assert len(names) == BIG + 1 and names[:2] == ["DICOMDIR", "PT000000/ST000000/SE000000/IM000000"]
    dialog.get_by_role("button", name="Close").click()

    # the list of shares: the download is counted; revoking ends the link
    page.get_by_role("link", name="Shares").click()
    share_row = page.locator("#shares tbody tr", has_text="for Dr. Martin")
    expect(share_row.locator("td").nth(4)).to_have_text("1")
    page.once("dialog", lambda d: d.accept())
    share_row.get_by_role("button", name="Revoke").click()
    expect(share_row.locator(".state")).to_have_text("revoked")
    assert requests.get(url, timeout=30).status_code == 410
    shot(page, "shares-revoked")

    assert not outside, f"the panel loaded something from outside Orthanc: {outside}"
    assert not problems, f"errors in the page: {problems}"
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= SCREEN["width"], f"the panel scrolls sideways on {SCREEN}: {width}px"


def zip_names(url: str) -> list[str]:
    """Download a share link as a colleague would (no Orthanc credentials); the names in the zip."""
    answer = requests.get(url, timeout=60)
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/zip", answer.text[:200]
    with zipfile.ZipFile(io.BytesIO(answer.content)) as archive:
        assert archive.testzip() is None
        return archive.namelist()
