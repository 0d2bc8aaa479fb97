"""Fixtures of the integration tests: real Orthanc processes on free ports."""

from __future__ import annotations

import pytest
from tests.support.dicom import write_dicom, write_series
from tests.support.orthanc import TARGET, TREE, OrthancServer, installed_versions
from tests.support.smbd import SambaServer

pytestmark = pytest.mark.integration


def target_description() -> str:
    """What ORTHANC_TARGET runs here, as installed (Debian unstable moves from one tree to the next)."""
    versions = ", ".join(f"{name} {version}" for name, version in installed_versions().items())
    where = "the host's packages" if TREE is None else f"the tree {TREE}"
    return f"ORTHANC_TARGET={TARGET}: {versions} ({where})"


def pytest_report_header(config):
    return target_description()


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_line(f"integration tests run on {target_description()}")


STARTED = pytest.StashKey[list]()  # the Orthanc processes a test started (orthanc_factory)
LOG_LINES = 200  # Orthanc's warnings and errors kept in a failure's report


def orthanc_log_excerpt(server: OrthancServer) -> str:
    """The last LOG_LINES lines of `server`'s log that are not info lines (I...: each request polled)."""
    lines = [line for line in server.log().splitlines() if not line.startswith("I")]
    return "\n".join([f"(the whole log: {server.log_path})", *lines[-LOG_LINES:]])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failure's report ends with the warnings and errors of each Orthanc the test started, and the
    logs of the test's smbd.

    They go into the report's traceback (not a captured section) so that a failure that passes on its
    rerun still explains itself: `--rerun-show-tracebacks` prints that traceback (see the Makefile).
    """
    report = yield
    if report.failed and hasattr(report.longrepr, "addsection"):
        for i, server in enumerate(item.stash.get(STARTED, [])):
            report.longrepr.addsection(f"Orthanc {i} log, warnings and errors", orthanc_log_excerpt(server))
        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, SambaServer):  # the test NAS: smbd's own account of its connections
                report.longrepr.addsection(f"smbd ({name}) logs, last lines", value.log_tail())
    return report


@pytest.fixture(scope="session")
def small_nas(tmp_path_factory):
    """A small NAS folder: 3 patients, 4 series, a file without SeriesInstanceUID and 3 non-DICOM files."""
    root = tmp_path_factory.mktemp("small-nas")
    write_series(root / "P1" / "20240101 CT" / "1", 6, PatientName="DOE^JOHN", PatientID="P1", SeriesNumber=1)
    write_series(root / "P1" / "20240101 CT" / "2", 4, PatientName="DOE^JOHN", PatientID="P1", SeriesNumber=2)
    write_series(root / "P2" / "MR", 3, PatientName="Müller^Jürgen", PatientID="P2", charset="ISO_IR 100",
                 Modality="MR")
    write_dicom(root / "P3" / "no-series-uid.dcm", SeriesInstanceUID=None, PatientID="P3")
    (root / "readme.txt").write_text("exported by the old PACS")
    (root / "empty.dcm").write_bytes(b"")
    (root / "login.dcm").write_text("<!DOCTYPE html><html>login</html>")
    return root


@pytest.fixture
def orthanc_factory(tmp_path, request):
    """Start Orthanc processes; all are stopped at the end of the test (their logs end a failure's report)."""
    started: list[OrthancServer] = []
    request.node.stash[STARTED] = started

    def start(nas: dict, workdir=None, **kw) -> OrthancServer:
        server = OrthancServer(workdir or tmp_path / f"orthanc{len(started)}", nas, **kw)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        try:
            server.stop()
        except RuntimeError:
            server.kill9()
