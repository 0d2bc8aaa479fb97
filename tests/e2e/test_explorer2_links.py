"""How users of Orthanc Explorer 2 reach the NAS panel, in headless Chromium against a real Orthanc.

Orthanc Explorer 2 is not packaged by Debian and does not run here, so what it does with what the plugin
offers is done the way its code does it: its plugin list links the `RootUri` of `GET /plugins/python`
behind one "../" per folder of its Root (`/ui/`; Plugin.cpp, GetPluginsConfiguration), and a GET custom
button follows its `Url`, `{PatientID}` replaced, as a link from its page under `/ui/app/`
(ResourceButtonGroup.vue). The button is the one README.md gives to paste.
"""

from __future__ import annotations

from urllib.parse import urljoin

import pytest
from playwright.sync_api import expect
from tests.support.dicom import write_series
from tests.support.orthanc import OrthancServer, free_port
from tests.support.readme import readme_json_with

pytestmark = pytest.mark.e2e


@pytest.fixture
def orthanc(tmp_path):
    """An Orthanc whose NAS holds two patients, indexed."""
    nas = tmp_path / "nas"
    write_series(nas / "muller" / "t1", 3, PatientName="Müller^Jürgen", PatientID="DE-1001", charset="ISO_IR 100",
                 Modality="MR", SeriesDescription="T1 sagittal")
    write_series(nas / "muller" / "pd", 2, PatientName="Müller^Jürgen", PatientID="DE-1001", charset="ISO_IR 100",
                 Modality="MR", SeriesDescription="PD fs coronal")
    write_series(nas / "doe", 2, PatientName="DOE^JOHN", PatientID="US-0042", Modality="CT")
    server = OrthancServer(tmp_path / "orthanc", nas={"Connection": {"Type": "local", "Path": str(nas)},
                                                     "ShareServer": {"Port": free_port()}})
    server.start()
    assert server.index()["phase"] == "done"
    yield server
    server.stop()


def test_the_readmes_study_button_opens_the_panel_searching_the_studys_patient(page, orthanc, screenshots):
    (button,) = readme_json_with("CustomButtons")["OrthancExplorer2"]["UiOptions"]["CustomButtons"]["study"]
    page.goto(urljoin(orthanc.url + "/ui/app/", button["Url"].replace("{PatientID}", "DE-1001")))
    rows = page.locator("#results tbody tr")
    expect(rows).to_have_count(2)
    for i in range(2):
        expect(rows.nth(i)).to_contain_text("DE-1001")
    expect(page.locator("#q")).to_have_value("DE-1001")
    expect(page.locator("#tab-search")).to_be_visible()
    screenshots(page, "study-button-search")


def test_the_plugin_lists_open_links_the_panel(page, orthanc, screenshots):
    root_uri = orthanc.get("/plugins/python").json()["RootUri"]
    page.goto(urljoin(orthanc.url + "/ui/app/settings", "../" + root_uri))
    expect(page.locator("#tab-search")).to_be_visible()  # a NAS with series opens on Search
    expect(page.locator("#results tbody tr")).to_have_count(0)  # nothing searched without ?q=
    screenshots(page, "plugin-list-open")
