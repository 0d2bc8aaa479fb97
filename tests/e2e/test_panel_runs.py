"""The Indexing tab shows when the NAS was last indexed, when the schedule runs next, and the runs."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect
from tests.support.dicom import write_series
from tests.support.orthanc import OrthancServer, free_port

pytestmark = pytest.mark.e2e


def test_the_indexing_tab_shows_the_schedule_and_the_runs(page, tmp_path, screenshots):
    nas = tmp_path / "nas"
    write_series(nas / "2024" / "11" / "CT", 3, PatientName="DOE^JOHN")
    write_series(nas / "2024" / "12" / "MR", 2, PatientName="ROE^JANE")
    server = OrthancServer(tmp_path / "orthanc", nas={"Connection": {"Type": "local", "Path": str(nas)},
                                                      "ShareServer": {"Port": free_port()},
                                                      "Schedule": "0 2 * * *"})
    with server:
        server.index()
        assert server.post("/nas/index", json={"path": "2024/12"}).status_code == 202
        server.wait_index(60)
        page.goto(f"{server.url}/nas/app/index.html#indexing")
        line = page.locator("#schedule-line")
        expect(line).to_have_text(re.compile(r"^Last indexed just now, next at \d\d/\d\d/\d{4}, \d\d:00\.$"))  # 2:00 on the server, in the browser's zone
        rows = page.locator("#runs-body tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0).locator("td")).to_have_text(
            [re.compile(r"\d"), "asked", "2024/12", "done", "0", "2", "0", "0", "0", "0", "0"])
        expect(rows.nth(1).locator("td").nth(2)).to_have_text("all")
        expect(rows.nth(1).locator("td").nth(8)).to_have_text("2")  # series added by the first run
        screenshots(page, "indexing-runs")
