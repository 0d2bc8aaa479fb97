"""The viewers this Orthanc has for a series: links found from the plugins Orthanc loaded, never guessed.

Orthanc Explorer (built into Orthanc) is always there. The others are plugins, known by the name each
gives Orthanc (`GET /plugins`): the Orthanc Web Viewer (`web-viewer`), the Stone Web Viewer
(`stone-webviewer`), OHIF (`ohif`) and Orthanc Explorer 2 (`orthanc-explorer-2`). Links are paths
from Orthanc's root (`/app/...`): a page served by Orthanc resolves them against its own address.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote


@dataclass(frozen=True)
class OrthancSeries:
    """A series as Orthanc has it: its Orthanc ID and its DICOM UIDs."""

    id: str
    study_id: str
    StudyInstanceUID: str
    SeriesInstanceUID: str


def _q(value: str) -> str:
    return quote(value, safe="")


#: plugin name -> (viewer's name, the link to one series)
PLUGIN_VIEWERS = {
    "web-viewer": ("Orthanc Web Viewer", lambda s: f"/web-viewer/app/viewer.html?series={_q(s.id)}"),
    "stone-webviewer": ("Stone Web Viewer",
                        lambda s: f"/stone-webviewer/index.html?study={_q(s.StudyInstanceUID)}"
                                  f"&series={_q(s.SeriesInstanceUID)}"),
    "ohif": ("OHIF", lambda s: f"/ohif/viewer?StudyInstanceUIDs={_q(s.StudyInstanceUID)}"),
    "orthanc-explorer-2": ("Orthanc Explorer 2",
                           lambda s: f"/ui/app/#/filtered-studies?StudyInstanceUID={_q(s.StudyInstanceUID)}"
                                     "&expand=series"),
}


def viewer_links(plugins: Iterable[str], series: OrthancSeries) -> list[dict]:
    """`[{"name", "url"}]` for one series: Orthanc Explorer's series page, then each loaded viewer plugin."""
    links = [{"name": "Orthanc Explorer", "url": f"/app/explorer.html#series?uuid={_q(series.id)}"}]
    loaded = set(plugins)
    for plugin, (name, link) in PLUGIN_VIEWERS.items():
        if plugin in loaded:
            links.append({"name": name, "url": link(series)})
    return links
