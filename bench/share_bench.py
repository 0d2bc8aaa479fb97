"""Share download benchmark: a 2 GiB series through the share listener of a real Orthanc.

    .venv/bin/python bench/share_bench.py [--files 4096] [--file-mib 0.5] [--runs 3] [--keep DIR] [--layout L]

Writes a series of sparse DICOM files (a real header, a hole for the pixels: no
disk space, no time to write), indexes it through Orthanc, shares it, then
measures, alternately and `--runs` times:

- raw: reading the same files in this process, 1 MiB at a time (the NAS read alone);
- raw + loopback: the same reads sent over a loopback TCP connection to a client
  thread that counts them (what moving the bytes to any client costs, no zip, no HTTP);
- listener: downloading the share's zip from the listener with a client that
  only counts bytes.

It prints the best MB/s of each (the least disturbed by other work on the
machine), their ratio, and the RSS of the Orthanc process before and at its
peak during the downloads (sampled every 20 ms with psutil).
"""

from __future__ import annotations

import argparse
import http.client
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "plugin")]

from tests.support.dicom import write_series  # noqa: E402
from tests.support.orthanc import OrthancServer, free_port  # noqa: E402

from orthanc_nas.catalog import series_key  # noqa: E402

MIB = 1024 * 1024


def read_raw(files: list[Path]) -> int:
    buffer = bytearray(MIB)
    total = 0
    for path in files:
        with open(path, "rb", buffering=0) as fh:
            while n := fh.readinto(buffer):
                total += n
    return total


def send_raw(files: list[Path]) -> int:
    """Read the files and send them over loopback TCP to a thread that counts them; returns the bytes."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        received = []

        def receive() -> None:
            with socket.create_connection(server.getsockname()) as sock:
                buffer, total = memoryview(bytearray(MIB)), 0
                while n := sock.recv_into(buffer):
                    total += n
                received.append(total)

        thread = threading.Thread(target=receive)
        thread.start()
        conn, _ = server.accept()
        with conn:
            for path in files:
                with open(path, "rb", buffering=0) as fh:
                    while data := fh.read(MIB):
                        conn.sendall(data)
        thread.join()
    return received[0]


def download(url: str) -> tuple[int, int]:
    """Bytes received and the announced Content-Length; the client does nothing but count."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("GET", parts.path)
    answer = conn.getresponse()
    assert answer.status == 200, answer.status
    buffer = memoryview(bytearray(MIB))
    total = 0
    while n := answer.readinto(buffer):
        total += n
    conn.close()
    return total, int(answer.getheader("Content-Length"))


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)


def timed(fn, *args) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4096)
    parser.add_argument("--file-mib", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    parser.add_argument("--layout", choices=("folders", "dicomdir"), default="folders",
                        help="the zip's layout (dicomdir: the DICOMDIR is made before the first byte)")
    args = parser.parse_args()

    work = Path(args.keep or tempfile.mkdtemp(prefix="share-bench-"))
    try:
        nas = work / "nas"
        uid = "2.25.4242424242"
        pixel_bytes = int(args.file_mib * MIB)
        if not nas.exists():
            write_series(nas / "series", args.files, pixel_bytes=pixel_bytes, sparse=True,
                         SeriesInstanceUID=uid, SeriesDescription="BENCH")
        files = sorted((nas / "series").iterdir())
        size = sum(f.stat().st_size for f in files)
        print(f"series: {len(files)} files, {size / MIB:.0f} MiB (sparse)")

        server = OrthancServer(work / "orthanc", nas={
            "Connection": {"Type": "local", "Path": str(nas)}, "DataDirectory": str(work / "orthanc" / "nas"),
            "ShareServer": {"Port": free_port()}})
        with server:
            server.index()
            share = server.post("/nas/shares", json={"series": [series_key({"SeriesInstanceUID": uid}, "")],
                                                      "layout": args.layout})
            url = share.json()["url"]
            process = psutil.Process(server.proc.pid)
            read_raw(files[:64])  # warm the page cache's metadata and the code paths
            download(url)
            time.sleep(0.5)
            rss_before = process.memory_info().rss
            sampler = RssSampler(server.proc.pid)
            sampler.start()
            raw, loopback, listener = [], [], []
            for _ in range(args.runs):
                seconds, total = timed(read_raw, files)
                raw.append(total / seconds / 1e6)
                seconds, total = timed(send_raw, files)
                loopback.append(total / seconds / 1e6)
                seconds, (received, announced) = timed(download, url)
                assert received == announced, (received, announced)
                listener.append(received / seconds / 1e6)
            sampler.done.set()
            sampler.join()
            cpu = process.cpu_times()
        best_raw, best_loopback, best_listener = max(raw), max(loopback), max(listener)
        print(f"zip size: {announced / MIB:.0f} MiB; runs: {args.runs}; best of each shown, MB = 10^6 bytes")
        for name, values in [("raw read", raw), ("raw + loopback", loopback), ("listener", listener)]:
            print(f"{name + ':':16}{max(values):7.0f} MB/s  (runs: {', '.join(f'{v:.0f}' for v in values)})")
        print(f"listener / raw read:       {best_listener / best_raw:5.0%}  (target >= 80%)")
        print(f"listener / raw + loopback: {best_listener / best_loopback:5.0%}")
        growth = (sampler.peak - rss_before) / MIB
        print(f"Orthanc RSS: before {rss_before / MIB:.0f} MiB, peak during {sampler.peak / MIB:.0f} MiB, "
              f"growth {growth:.1f} MiB  (target < 50 MB)")
        print(f"Orthanc CPU: user {cpu.user:.1f}s system {cpu.system:.1f}s; machine: {psutil.cpu_count()} cores, "
              f"load {psutil.getloadavg()[0]:.1f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
