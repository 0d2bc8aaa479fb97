"""dcmtk's network tools as the peers a workstation or PACS would be: findscu, movescu, getscu, storescp."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pydicom

from tests.support.orthanc import free_port


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a dcmtk tool; never hangs the test longer than `timeout`."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def keys(query: dict) -> list[str]:
    """`-k` arguments of a query: {"PatientName": "DOE*", "StudyDate": ""} (empty: a return key)."""
    found = []
    for keyword, value in query.items():
        found += ["-k", f"{keyword}={value}" if value is not None and value != "" else keyword]
    return found


def find(port: int, query: dict, out: Path, *, model: str = "-S", aet: str = "WS1", called: str = "NAS",
         ) -> list[pydicom.Dataset]:
    """A C-FIND through findscu; the answers as datasets (read back from the files findscu extracts)."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("rsp*.dcm"):
        old.unlink()
    result = run("findscu", model, "-aet", aet, "-aec", called, "-X", "-od", out, "127.0.0.1", port,
                 "-k", "SpecificCharacterSet=ISO_IR 192", *keys(query))
    assert result.returncode == 0, result.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def body(path: Path | str) -> bytes:
    """A DICOM file's dataset, without preamble and File Meta Information (what C-STORE carries)."""
    data = Path(path).read_bytes()
    assert data[128:132] == b"DICM", path
    meta_length = int.from_bytes(data[140:144], "little")
    return data[144 + meta_length:]


class StoreSCP:
    """storescp on a free port writing what it receives, bit-preserving, into `folder`."""

    def __init__(self, folder: Path, aet: str = "WS1", accept_all: bool = False, port: int | None = None):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.port = port or free_port()
        args = ["storescp", "+B", "-od", str(self.folder), "-aet", aet, "-dhl"]
        if accept_all:
            args.append("+xa")
        self.log = open(self.folder.parent / f"storescp-{self.port}.log", "wb")
        self.proc = subprocess.Popen([*args, str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 20
        while run("echoscu", "-aec", aet, "127.0.0.1", self.port, timeout=10).returncode != 0:
            assert self.proc.poll() is None and time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
        self.log.close()

    def __enter__(self) -> StoreSCP:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
