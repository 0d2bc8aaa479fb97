"""Open, Send to… and the priors in headless Chromium against a real Orthanc with Debian's Orthanc Web
Viewer: search → Open → the viewer's page for that series opens in a new tab and draws the image; Send
to a dcmtk storescp after a connection check; "Priors on the NAS" on Orthanc Explorer's study page."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from tests.support.dcmtk import StoreSCP, body
from tests.support.orthanc import PYTHON_PLUGIN, TARGET, OrthancServer, free_port

pytestmark = pytest.mark.e2e
WEB_VIEWER = "/usr/share/orthanc/plugins/libOrthancWebViewer.so"
SIZE = 64


def write_image(path: Path, study: str, series: str, number: int, **attrs) -> Path:
    """A real 64×64 MONOCHROME2 CT image (a gradient), so a viewer has something to draw."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, number
    ds.PatientName, ds.PatientID = attrs.pop("PatientName", "DOE^JOHN"), attrs.pop("PatientID", "US-0042")
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.PixelData = struct.pack(f"<{SIZE * SIZE}H", *((x * 64 + y * 16) % 4096 for y in range(SIZE) for x in range(SIZE)))
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_nas(root: Path) -> Path:
    for folder, date, description, count in (("ct-2024", "20240316", "CT THORAX", 3),
                                             ("ct-2022", "20220110", "CT THORAX PRIOR", 2)):
        study, series = generate_uid(), generate_uid()
        for i in range(count):
            write_image(root / folder / f"IM{i + 1}.dcm", study, series, i + 1, StudyDate=date,
                        StudyDescription=description, SeriesDescription="Axial")
    write_image(root / "other" / "IM1.dcm", generate_uid(), generate_uid(), 1, PatientName="ROE^JANE",
                PatientID="OTHER-1", StudyDate="20240101", StudyDescription="CT HEAD")
    return root


@pytest.fixture
def setup(tmp_path):
    if TARGET != "1.10":
        pytest.skip("Debian 12's orthanc-webviewer loads into Orthanc 1.10 only")
    if not os.path.exists(WEB_VIEWER):
        pytest.skip("apt-get install orthanc-webviewer")
    nas = write_nas(tmp_path / "nas")
    with StoreSCP(tmp_path / "ws", aet="WS1") as scp:
        server = OrthancServer(tmp_path / "orthanc", nas={
            "Connection": {"Type": "local", "Path": str(nas)}, "ShareServer": {"Port": free_port()}},
            extra={"Plugins": [PYTHON_PLUGIN, WEB_VIEWER],
                   "DicomModalities": {"workstation": ["WS1", "127.0.0.1", scp.port]}})
        server.start()
        try:
            assert server.index()["phase"] == "done"
            yield server, nas, scp
        finally:
            server.stop()


def canvas_drawn(page: Page) -> bool:
    """Whether some canvas of the page has pixels that are neither transparent nor black."""
    return page.evaluate("""() => Array.from(document.querySelectorAll('canvas')).some(c => {
        if (!c.width || !c.height) return false;
        const ctx = c.getContext('2d');
        if (!ctx) return false;
        const d = ctx.getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4) { if (d[i + 3] && (d[i] || d[i + 1] || d[i + 2])) return true; }
        return false; })""")


def search_row(page: Page, text: str):
    return page.locator("#results tbody tr", has_text=text)


def test_open_send_and_priors(page: Page, setup, screenshots):
    server, nas, scp = setup
    problems = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{server.url}/nas/app/index.html#q=thorax")
    row = search_row(page, "CT THORAX PRIOR")
    expect(row).to_have_count(1)

    # Open: the viewer tab opens at once, and shows the series once it is in Orthanc
    with page.context.expect_page() as opened:
        page.locator("#results tbody tr").filter(has_not_text="PRIOR").get_by_role("button", name="Open").click()
    viewer = opened.value
    expect(page.locator("#job-phase")).to_contain_text("done", timeout=60_000)
    screenshots(page, "opened")
    viewer.wait_for_url("**/web-viewer/app/viewer.html?series=*", timeout=60_000)
    series_id = viewer.url.split("series=")[1]
    assert len(server.get(f"/series/{series_id}/instances").json()) == 3
    viewer.wait_for_function("() => document.querySelectorAll('canvas').length > 0", timeout=60_000)
    drawn = False
    for _ in range(150):  # the viewer draws once the image is decoded: up to 30 s
        drawn = canvas_drawn(viewer)
        if drawn:
            break
        viewer.wait_for_timeout(200)
    screenshots(viewer, "viewer")
    assert drawn, "the Orthanc Web Viewer drew nothing"
    viewer.close()
    page.locator("#job-dialog [data-close]").click()

    # Send to…: the workstation answers the check, then gets the prior series
    row.get_by_role("button", name="Send to…").click()
    expect(page.locator("#send-destination option")).to_have_count(1)
    page.get_by_role("button", name="Check connection").click()
    expect(page.locator("#send-echo-result")).to_contain_text("workstation answers")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.locator("#job-phase")).to_contain_text("Sending to workstation: done", timeout=60_000)
    screenshots(page, "sent")
    assert sorted(body(p) for p in scp.files()) == sorted(body(p) for p in (nas / "ct-2022").iterdir())
    page.locator("#job-dialog [data-close]").click()

    # the Jobs tab lists both, newest first
    page.get_by_role("link", name="Jobs").click()
    expect(page.locator("#jobs tbody tr")).to_have_count(2)
    expect(page.locator("#jobs tbody tr").first).to_contain_text("workstation")
    expect(page.locator("#jobs tbody tr").nth(1).get_by_role("link", name="Orthanc Web Viewer")).to_be_visible()
    screenshots(page, "jobs")

    # Orthanc Explorer's study page: "Priors on the NAS" lists the NAS series of the same patient
    study_id = server.get(f"/series/{series_id}").json()["ParentStudy"]
    page.goto(f"{server.url}/app/explorer.html#study?uuid={study_id}")
    priors = page.get_by_role("link", name="Priors on the NAS")
    expect(priors).to_have_attribute("href", "../nas/app/index.html#patient=US-0042")
    priors.click()
    expect(page.locator("#results tbody tr")).to_have_count(2)
    expect(page.locator("#result-count")).to_contain_text("US-0042")
    expect(page.locator("#results tbody tr").first).to_contain_text("CT THORAX")
    expect(page.locator("#results tbody tr").nth(1)).to_contain_text("CT THORAX PRIOR")
    screenshots(page, "priors")
    assert not problems, problems
