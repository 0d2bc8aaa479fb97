"""Import a series into Orthanc three ways, in the same run: the plugin's `POST /nas/retrieve`, a script that
POSTs each file to `/instances` in turn (as Orthanc's sample ImportDicomFiles.py does), and dcmtk's
storescu into Orthanc's DICOM port. Each into a fresh Orthanc; files/s each. Then a send to dcmtk's
storescp: the plugin's `"to": "<modality>"` against storescu of the same files (with and without
`TCP_NODELAY=1`, which Debian's dcmtk needs to leave Nagle's algorithm off).

    .venv/bin/python -m bench.retrieve_bench --files 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import requests
from tests.support.dcmtk import StoreSCP
from tests.support.dicom import write_series
from tests.support.orthanc import OrthancServer, free_port

SCP_PORT = free_port()


def fresh(work: Path, nas: Path, name: str, modalities: bool = False) -> OrthancServer:
    extra = {"DicomServerEnabled": True, "DicomPort": free_port()}
    if modalities:
        extra["DicomModalities"] = {"ws": ["WS1", "127.0.0.1", SCP_PORT]}
    server = OrthancServer(work / name, nas={"Connection": {"Type": "local", "Path": str(nas)},
                                             "DataDirectory": str(work / name / "nasdata"),
                                             "ShareServer": {"Port": 0}}, extra=extra)
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--pixel-bytes", type=int, default=512 * 512 * 2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="retrieve-bench-"))
    nas = work / "nas"
    paths = write_series(nas / "S", args.files, pixel_bytes=args.pixel_bytes)
    total = sum(p.stat().st_size for p in paths)
    print(f"{args.files} files, {total / 1e6:.1f} MB")

    server = fresh(work, nas, "plugin")
    try:
        server.index()
        key = server.get("/nas/search").json()[0]["series_key"]
        began = time.monotonic()
        job_id = server.post("/nas/retrieve", json={"series": [key]}).json()["job"]
        while (job := server.get(f"/nas/jobs/{job_id}").json())["state"] in ("pending", "running"):
            time.sleep(0.05)
        elapsed = time.monotonic() - began
        assert job["files_done"] == args.files, job
        print(f"plugin POST /nas/retrieve: {elapsed:.1f} s, {args.files / elapsed:.0f} files/s")
    finally:
        server.stop()

    server = fresh(work, nas, "post")
    try:
        session = requests.Session()
        began = time.monotonic()
        for path in paths:
            session.post(f"{server.url}/instances", data=path.read_bytes()).raise_for_status()
        elapsed = time.monotonic() - began
        print(f"sequential POST /instances: {elapsed:.1f} s, {args.files / elapsed:.0f} files/s")
    finally:
        server.stop()

    server = fresh(work, nas, "storescu")
    try:
        began = time.monotonic()
        subprocess.run(["storescu", "-aec", "ORTHANC", "127.0.0.1", str(json.loads(server.config_path.read_text())["DicomPort"]), "+sd",
                        str(nas / "S")], check=True, capture_output=True)
        elapsed = time.monotonic() - began
        print(f"storescu into Orthanc's DICOM port: {elapsed:.1f} s, {args.files / elapsed:.0f} files/s")
    finally:
        server.stop()

    server = fresh(work, nas, "send", modalities=True)
    try:
        server.index()
        key = server.get("/nas/search").json()[0]["series_key"]
        for label, run in (("plugin to storescp", None), ("storescu to storescp", {}),
                           ("storescu to storescp, TCP_NODELAY=1", {"TCP_NODELAY": "1"})):
            os.environ["TCP_NODELAY"] = "1"  # storescp answers each C-STORE at once (else ~40 ms per file)
            scp = StoreSCP(work / f"scp-{len(label)}", aet="WS1", port=SCP_PORT)
            del os.environ["TCP_NODELAY"]
            with scp:
                began = time.monotonic()
                if run is None:
                    job_id = server.post("/nas/retrieve", json={"series": [key], "to": "ws"}).json()["job"]
                    while (job := server.get(f"/nas/jobs/{job_id}").json())["state"] in ("pending", "running"):
                        time.sleep(0.05)
                    assert job["files_done"] == args.files, job
                else:
                    subprocess.run(["storescu", "-aec", "WS1", "127.0.0.1", str(scp.port), "+sd", str(nas / "S")],
                                   check=True, capture_output=True, env={**os.environ, **run})
                elapsed = time.monotonic() - began
                assert len(scp.files()) == args.files
            print(f"{label}: {elapsed:.1f} s, {args.files / elapsed:.0f} files/s")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
