"""Compare SMB client libraries on a private loopback Samba: listing and head reads, 1 and 8 threads.

    python bench/smb_clients.py [--files 2000] [--delay-ms 0]

Needs root (it creates the Samba user) and the Debian packages samba, smbclient,
python3-smbc. Contenders:

- libsmbclient through this product's `SmbSource` (ctypes binding, one client process
  per connection): readdirplus listing (size and mtime included), open + read + close
  per head in one request to the process;
- python3-smbc (pysmbc 1.0.23, also libsmbclient): `getdents` gives names only, so a
  listing with sizes and mtimes needs a stat per file; with threads it is run in a child
  process, because libsmbclient 4.17 used by several threads aborts the process;
- smbprotocol 1.17 (pure Python): `scandir` with `smb_info`, `open_file(share_access="r")`.

"CPU ms/file" is this process's CPU time (all threads) per file, the client's cost (smbd
runs on the other core); for `SmbSource`, its client processes' CPU is added. A counting
TCP proxy (in a child process) reports SMB2 frames per head read, each one a round trip;
with `--delay-ms` every run goes through it, with that delay added each way, to see what
latency does.
"""

from __future__ import annotations

import argparse
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import psutil

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, "..", "plugin"), os.path.join(HERE, "..")]

from tests.support.smbd import SambaServer, make_share_dir, smb_client_processes  # noqa: E402

from orthanc_nas.sources.smb import SmbSource  # noqa: E402
from orthanc_nas.sources.walk import Folder, parallel_walk  # noqa: E402

HEAD = 8192
PER_FOLDER = 50


class CountingProxy:
    """Forwards TCP to smbd, counting client->server NetBIOS frames (one per request or compound)."""

    def __init__(self, port: int, delay: float = 0.0):
        self.target, self.delay, self.frames = port, delay, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.sock.accept()
            server = socket.create_connection(("127.0.0.1", self.target))
            for a, b, count in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, count), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, count: bool) -> None:
        line: queue.Queue = queue.Queue()  # a delay line: chunks go out `delay` after they came in
        threading.Thread(target=self._send, args=(line, dst), daemon=True).start()
        pending = b""
        while data := _recv(src):
            if count:  # frames are a 4-byte length (big-endian, 24 bits) then the SMB2 message
                pending += data
                while len(pending) >= 4 and len(pending) >= 4 + int.from_bytes(pending[1:4], "big"):
                    pending = pending[4 + int.from_bytes(pending[1:4], "big"):]
                    self.frames += 1
            line.put((time.perf_counter() + self.delay, data))
        line.put((0.0, b""))

    @staticmethod
    def _send(line: queue.Queue, dst: socket.socket) -> None:
        while True:
            due, data = line.get()
            if not data:
                dst.close()
                return
            if (wait := due - time.perf_counter()) > 0:
                time.sleep(wait)
            dst.sendall(data)


class ProxyProcess:
    """A `CountingProxy` in a child process: its threads neither take this process's GIL nor its CPU."""

    def __init__(self, target: int, delay: float = 0.0):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-proxy", str(target), str(delay)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())

    @property
    def frames(self) -> int:
        self.proc.stdin.write("frames\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def serve_proxy(target: int, delay: float) -> None:
    proxy = CountingProxy(target, delay)
    print(proxy.port, flush=True)
    for _line in sys.stdin:  # one line asks for the count; end of input ends the proxy
        print(proxy.frames, flush=True)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except OSError:  # the other side reset the connection: end of this pipe
        return b""


def make_corpus(n: int) -> tuple[str, list[str]]:
    root = make_share_dir("nas-bench-")
    paths = []
    for i in range(n):
        folder = f"series {i // PER_FOLDER:03d}"
        os.makedirs(os.path.join(root, folder), mode=0o755, exist_ok=True)
        rel = f"{folder}/IM {i:05d}.dcm"
        with open(os.path.join(root, rel), "wb") as fh:
            fh.write(os.urandom(20_000))
        os.chmod(os.path.join(root, rel), 0o644)
        paths.append(rel)
    return root, paths


def client_cpu() -> float:
    """CPU seconds of this process and of its SMB client processes alive now (SmbSource's)."""
    total = time.process_time()
    for child in smb_client_processes(os.getpid()):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def timed(label: str, n: int, fn) -> None:
    wall, cpu = time.perf_counter(), client_cpu()
    fn()
    wall, cpu = time.perf_counter() - wall, client_cpu() - cpu
    print(f"  {label:<46} {n / wall:>9,.0f} files/s   {cpu / n * 1000:6.3f} CPU ms/file")


def fan_out(threads: int, items, fn) -> None:
    with ThreadPoolExecutor(threads) as pool:
        for _ in pool.map(fn, items):
            pass


def bench_libsmbclient(conn, paths) -> None:
    print("libsmbclient (ctypes binding, SmbSource)")
    for threads in (1, 8):
        source = SmbSource(conn, threads=threads)
        timed(f"list, size+mtime, {threads} thread(s)", len(paths),
              lambda s=source: sum(1 for _ in s.walk(threading.Event())))
        timed(f"open+read {HEAD} B+close, {threads} thread(s)", len(paths),
              lambda s=source, t=threads: fan_out(t, paths, lambda p: s.read_head(p, HEAD)))
        source.close()


def bench_smbprotocol(conn, paths) -> None:
    import smbclient

    print("smbprotocol")
    session = smbclient.register_session(conn.Host, username=conn.Username, password=conn.Password,
                                         port=conn.Port, connection_timeout=10)
    # many threads on one connection run out of credits unless more are asked for up front
    session.connection.echo(sid=session.session_id, credit_request=256)
    unc = f"\\\\{conn.Host}\\{conn.Share}"

    def list_folder(rel):
        for e in smbclient.scandir(unc + ("\\" + rel.replace("/", "\\") if rel else ""), port=conn.Port):
            if e.is_dir():
                yield Folder(f"{rel}/{e.name}" if rel else e.name)
            else:
                info = e.smb_info  # entry.stat() would reconnect on port 445, and cost a round trip
                yield (e.name, info.end_of_file, info.last_write_time)

    def read(rel):
        with smbclient.open_file(unc + "\\" + rel.replace("/", "\\"), mode="rb", share_access="r",
                                 port=conn.Port) as fh:
            return fh.read(HEAD)

    for threads in (1, 8):
        timed(f"list, size+mtime, {threads} thread(s)", len(paths),
              lambda t=threads: sum(1 for _ in parallel_walk(list_folder, threading.Event(), t)))
        timed(f"open+read {HEAD} B+close, {threads} thread(s)", len(paths),
              lambda t=threads: fan_out(t, paths, read))
    smbclient.reset_connection_cache()


PYSMBC_CHILD = """
import smbc, sys, threading
port, n, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
paths = sys.argv[4:]
def work(k):
    c = smbc.Context(auth_fn=lambda *a: ("WORKGROUP", "nasuser", "secret"))
    c.optionNoAutoAnonymousLogin = True
    c.port = port
    for p in paths[k::threads]:
        f = c.open("smb://127.0.0.1/dicom/" + p)
        f.read(8192)
        f.close()
ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
[t.start() for t in ts]
[t.join() for t in ts]
"""


def bench_pysmbc(conn, paths) -> None:
    import smbc

    print("python3-smbc (pysmbc 1.0.23)")
    ctx = smbc.Context(auth_fn=lambda *a: ("WORKGROUP", conn.Username, conn.Password))
    ctx.optionNoAutoAnonymousLogin = True
    ctx.port = conn.Port
    base = f"smb://{conn.Host}/{conn.Share}"
    folders = sorted({p.rsplit("/", 1)[0] for p in paths})

    def names_only():
        for d in folders:
            ctx.opendir(f"{base}/{d}").getdents()

    def with_stat():  # what a listing with sizes and mtimes costs here
        for d in folders:
            for e in ctx.opendir(f"{base}/{d}").getdents():
                if e.name not in (".", ".."):
                    ctx.stat(f"{base}/{d}/{e.name}")

    def reads():
        for p in paths:
            fh = ctx.open(f"{base}/{p}")
            fh.read(HEAD)
            fh.close()

    timed("list, names only (getdents), 1 thread", len(paths), names_only)
    timed("list + stat per file, 1 thread", len(paths), with_stat)
    timed(f"open+read {HEAD} B+close, 1 thread", len(paths), reads)
    for attempt in range(1, 4):  # the crash is a race: it may take more than one run
        started = time.perf_counter()
        child = subprocess.run([sys.executable, "-c", PYSMBC_CHILD, str(conn.Port), str(len(paths)), "8",
                                *paths], capture_output=True, text=True, timeout=300)
        last = (child.stdout + child.stderr).strip().splitlines()[-1:] or [""]
        outcome = "ran to the end" if child.returncode == 0 else f"process died, exit {child.returncode}"
        print(f"  8 threads, one Context each (child process, run {attempt}): {outcome} after "
              f"{time.perf_counter() - started:.1f} s  {last[0][:60]}")
        if child.returncode:
            break


def round_trips(server, conn, delay: float) -> None:
    proxy = ProxyProcess(server.port, delay)
    source = SmbSource(replace(conn, Port=proxy.port))
    source.read_head("series 000/IM 00000.dcm", HEAD)  # connect first
    before = proxy.frames
    for i in range(1, 41):
        source.read_head(f"series 000/IM {i:05d}.dcm", HEAD)
    per_read = (proxy.frames - before) / 40
    before = proxy.frames
    source.check_root()
    per_listing = proxy.frames - before
    started = time.perf_counter()
    for i in range(40):
        source.read_head(f"series 001/IM {PER_FOLDER + i:05d}.dcm", HEAD)
    print(f"round trips (SMB2 frames client->server): {per_read:.1f} per head read, {per_listing} per "
          f"folder listing; through the proxy{f' (+{delay * 1000:g} ms each way)' if delay else ''}: "
          f"{(time.perf_counter() - started) / 40 * 1000:.2f} ms per head read")
    source.close()
    proxy.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added each way in the counting proxy")
    parser.add_argument("--serve-proxy", nargs=2, metavar=("PORT", "DELAY_S"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_proxy:
        return serve_proxy(int(args.serve_proxy[0]), float(args.serve_proxy[1]))
    root, paths = make_corpus(args.files)
    try:
        with SambaServer(root) as server:
            conn = server.connection()
            delayed = ProxyProcess(server.port, args.delay_ms / 1000) if args.delay_ms else None
            if delayed:
                conn = replace(conn, Port=delayed.port)
            print(f"{len(paths)} files of 20 kB in {len(paths) // PER_FOLDER} folders, smbd on loopback, "
                  f"{os.cpu_count()} CPUs, {f'+{args.delay_ms:g} ms each way' if args.delay_ms else 'no added delay'}"
                  "\n")
            bench_libsmbclient(conn, paths)
            bench_smbprotocol(conn, paths)
            bench_pysmbc(conn, paths)
            print()
            round_trips(server, conn, args.delay_ms / 1000)
            if delayed:
                delayed.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
