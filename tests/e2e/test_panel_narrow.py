"""The panel in a narrow window (800 px) against a real Orthanc: a new search starts with no selection,
every row's Share button can be reached without scrolling sideways, and the Shares tab tells links
without a label apart by what they hold."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect
from tests.support.dicom import write_series
from tests.support.orthanc import OrthancServer, free_port

pytestmark = pytest.mark.e2e

NARROW = {"width": 800, "height": 700}


@pytest.fixture
def orthanc(tmp_path):
    root = tmp_path / "nas"
    write_series(root / "doe", 2, PatientName="DOE^JOHN", PatientID="US-0042", Modality="CT",
                 StudyDate="20240316", StudyDescription="CT THORAX WITH A LONG DESCRIPTION OF THE PROTOCOL",
                 SeriesDescription="Lung 1.0 axial, a long series description as scanners write them")
    write_series(root / "muller", 2, PatientName="Müller^Jürgen", PatientID="DE-1001", Modality="MR",
                 StudyDate="20240315", StudyDescription="MRT Knie rechts", SeriesDescription="T1 sagittal")
    server = OrthancServer(tmp_path / "orthanc", nas={"Connection": {"Path": str(root)},
                                                      "ShareServer": {"Port": free_port()}})
    server.start()
    server.index()
    yield server
    server.stop()


def search(page: Page, text: str) -> None:
    page.locator("#q").fill(text)
    page.get_by_role("button", name="Search", exact=True).click()


def test_a_narrow_window_a_new_search_and_unlabelled_shares(browser, orthanc, screenshots):
    context = browser.new_context(viewport=NARROW, locale="en-GB", timezone_id="Europe/Brussels")
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        page.goto(f"{orthanc.url}/nas/app/index.html#search")
        search(page, "")
        rows = page.locator("#results tbody tr[data-key]")
        expect(rows).to_have_count(2)
        screenshots(page, "results-800px")
        for i in range(2):  # each row's Share button lies inside the window, without scrolling sideways
            box = rows.nth(i).get_by_role("button", name="Share").bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= NARROW["width"], box
        assert page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]

        # a selection belongs to the search it was made in: a new search starts with none
        rows.nth(0).locator("input[type=checkbox]").check()
        expect(page.locator("#share-selected")).to_have_text("Share 1 selected series")
        search(page, "doe")
        expect(rows).to_have_count(1)
        expect(page.locator("#share-selected")).to_be_disabled()
        expect(rows.nth(0).locator("input[type=checkbox]")).not_to_be_checked()

        # two links without a label, one per patient
        for patient in ("doe", "muller"):
            search(page, patient)
            rows.nth(0).get_by_role("button", name="Share").click()
            page.locator("#share-label").fill("")
            page.get_by_role("button", name="Create link").click()
            expect(page.locator("#share-url")).to_have_value(re.compile("/share/"))
            page.locator("#share-dialog").get_by_role("button", name="Close").first.click()
        page.get_by_role("link", name="Shares").click()
        shares = page.locator("#shares tbody tr[data-id]")
        expect(shares).to_have_count(2)
        screenshots(page, "shares-unlabelled")
        expect(shares.nth(0)).to_contain_text("Müller, Jürgen")  # newest first
        expect(shares.nth(0)).to_contain_text("T1 sagittal")
        expect(shares.nth(1)).to_contain_text("DOE, JOHN")
        for i in range(2):  # what a link holds is shown whole, and Revoke lies inside the window
            expect(shares.nth(i).locator(".about")).to_be_visible()
            about = shares.nth(i).locator(".about").evaluate("e => e.scrollWidth <= e.clientWidth")
            box = shares.nth(i).get_by_role("button", name="Revoke").bounding_box()
            assert about and box and box["x"] + box["width"] <= NARROW["width"], box
    finally:
        context.close()
