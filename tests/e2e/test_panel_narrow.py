"""The panel in a narrow window (800 px) against a real Orthanc: a new search starts with no selection,
every row's Share button can be reached without scrolling sideways, and the Shares tab tells links
without a label apart by what they hold. At 1280, 800 and 390 px every column of the share links, the
search results and the jobs can be read: none lies beneath the sticky column of buttons."""

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


#: Whether a table cell can be read: the browser scrolls it into view as it would for a keyboard or a
#: find-in-page (`scrollIntoView`, nearest edge); then the cell must lie inside the window and inside its
#: table's frame, and the points just inside its corners and its centre must hit the cell itself (or what
#: it holds), not a cell of the sticky column nor anything else drawn over it. A table shown as cards has
#: no visible header: each cell then carries its column's name (`data-label`, drawn before its value).
READABLE = """(table, named) => {
  const wrap = table.closest('.table-wrap');
  const row = table.querySelector('tbody tr:is([data-id], [data-key], [data-job])');
  const cards = getComputedStyle(row).display !== 'table-row';
  const all = [...table.tHead.rows[0].cells], heads = all.filter(th => th.textContent.trim());
  const cells = cards ? heads.map(th => row.querySelector(`td[data-label="${th.textContent.trim()}"]`))
                      : heads.concat([row.cells[all.findIndex(th => th.textContent.trim() === named)]]);
  const problems = [];
  cells.forEach((cell, i) => {
    const what = i < heads.length ? heads[i].textContent.trim() : named + ' cell';
    if (!cell) { problems.push(what + ': no cell'); return; }
    if (cards && getComputedStyle(cell, '::before').content !== JSON.stringify(heads[i].textContent.trim())) {
      problems.push(what + ': its card shows no label');
    }
    cell.scrollIntoView({block: 'nearest', inline: 'nearest'});
    const r = cell.getBoundingClientRect(), w = wrap.getBoundingClientRect();
    if (!r.width || !r.height) { problems.push(what + ': not shown'); return; }
    if (r.left < Math.max(0, w.left) - 0.5 || r.right > Math.min(innerWidth, w.right) + 0.5) {
      problems.push(`${what}: ${Math.round(r.left)}..${Math.round(r.right)} px, outside the frame`);
    }
    const inset = Math.min(3, r.width / 4, r.height / 4);
    for (const [x, y] of [[r.left + r.width / 2, r.top + r.height / 2], [r.left + inset, r.top + inset],
                          [r.right - inset, r.top + inset], [r.left + inset, r.bottom - inset],
                          [r.right - inset, r.bottom - inset]]) {
      const hit = document.elementFromPoint(x, y);
      if (!hit || !(hit === cell || cell.contains(hit))) {
        problems.push(`${what}: covered at (${Math.round(x)}, ${Math.round(y)}) by ` +
                      (hit ? hit.tagName.toLowerCase() + '.' + hit.className : 'nothing'));
        break;
      }
    }
  });
  return problems;
}"""


@pytest.mark.parametrize("width", [1280, 800, 390])
def test_every_column_of_the_shares_results_and_jobs_can_be_read(browser, orthanc, screenshots, width):
    keys = [row["series_key"] for row in orthanc.get("/nas/search").json()]
    kept = orthanc.post("/nas/shares", json={"series": keys, "label": "Dr. Martin, second opinion",
                                              "passphrase": "by phone 42", "max_downloads": 3})
    ended = orthanc.post("/nas/shares", json={"series": keys[:1]})
    assert kept.status_code == ended.status_code == 201, (kept.text, ended.text)
    assert orthanc.delete(f"/nas/shares/{ended.json()['id']}").status_code in (200, 204)
    assert orthanc.post("/nas/retrieve", json={"series": keys[:1], "to": "orthanc"}).status_code == 202

    context = browser.new_context(viewport={"width": width, "height": 700}, locale="en-GB",
                                  timezone_id="Europe/Brussels")
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        page.goto(f"{orthanc.url}/nas/app/index.html#shares")
        shares = page.locator("#shares tbody tr[data-id]")
        expect(shares).to_have_count(2)
        expect(shares.nth(0).locator(".state")).to_have_text("revoked")  # newest first; no Revoke button
        screenshots(page, f"shares-{width}px")
        assert page.locator("#shares").evaluate(READABLE, "State") == []
        box = shares.nth(1).get_by_role("button", name="Revoke").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, box  # without scrolling sideways

        page.get_by_role("link", name="Search").click()
        search(page, "doe")
        rows = page.locator("#results tbody tr[data-key]")
        expect(rows).to_have_count(1)
        screenshots(page, f"results-{width}px")
        page.locator("#results").evaluate("t => t.closest('.table-wrap').scrollLeft = 0")
        box = rows.nth(0).get_by_role("button", name="Share").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, box
        assert page.locator("#results").evaluate(READABLE, "Modality") == []

        page.get_by_role("link", name="Jobs").click()
        expect(page.locator("#jobs tbody tr[data-job]")).to_have_count(1)
        screenshots(page, f"jobs-{width}px")
        assert page.locator("#jobs").evaluate(READABLE, "State") == []
        # the page itself never scrolls sideways: the tabs, the toolbars and the tables fit the window
        assert page.evaluate("document.documentElement.scrollWidth") <= width
    finally:
        context.close()
