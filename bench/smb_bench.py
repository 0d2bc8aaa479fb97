"""Indexing over SMB: the plugin's indexer against the naive baseline, on loopback Samba and on a slow LAN.

    python bench/smb_bench.py [--files 10000] [--baseline-files 1000] [--delay-ms 2] [--no-orthanc]

The corpus of `bench/index_bench.py` (var/bench/corpus-N, made once and kept) is served
by a private smbd on loopback (`tests/support/smbd.py`). In the same run:

* baseline: what a user following smbprotocol's documentation writes -- register the
  session once, `smbclient.walk`, then `pydicom.dcmread(smbclient.open_file(...),
  stop_before_pixels=True)` file after file. It is slow, so it is time-boxed: it runs on
  the first `--baseline-files` files and its rate is taken as the rate for the corpus;
* the plugin's indexer in the core (`python -m orthanc_nas index smb://...`, the password
  in NAS_PASSWORD), a full run over the whole corpus, and the same inside a real Orthanc;
* inside Orthanc, how many SMB client processes it ran at most and their private memory (USS)
  in all, sampled every second;
* enumeration alone: the plugin's parallel listing (`SmbSource.walk`) and `smbclient.walk`;
* each contender `--runs` times, keeping its fastest run (the machine is shared with other work);
* all of it again through a TCP proxy adding `--delay-ms` each way (a slow LAN), whose
  real round trip is measured with SMB echo requests and reported. Bytes per file are the
  bytes the NAS sent through the proxy, divided by the files read.

Each measured piece runs in a child process of its own; the proxy too. Figures go to
stdout and var/bench/smb-results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin"), str(REPO / "bench")]

from tests.support.orthanc import OrthancServer  # noqa: E402
from tests.support.smbd import SambaServer, make_share_dir, smb_client_processes  # noqa: E402
from tests.support.tcp_proxy import ProxyProcess  # noqa: E402

from corpus import write_corpus  # noqa: E402
from index_bench import corpus  # noqa: E402

PY = sys.executable
CHILD_ENV = dict(os.environ, PYTHONPATH=f"{REPO / 'plugin'}:{REPO}")

# What a user following smbprotocol's documentation writes (one session, then smbclient's os-like calls).
BASELINE = """
import json, ntpath, time, warnings
import pydicom, smbclient
from orthanc_nas.headers import FIELDS
warnings.simplefilter("ignore")
host, port, share, user, password, limit = {args!r}
smbclient.register_session(host, username=user, password=password, port=port)
t = time.monotonic(); n = errors = 0
for folder, _dirs, names in smbclient.walk(rf"\\\\{{host}}\\{{share}}", port=port):
    for name in names:
        try:
            with smbclient.open_file(ntpath.join(folder, name), mode="rb", share_access="r", port=port) as fh:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
                row = {{k: str(ds.get(k, "")) for k in FIELDS}}
        except Exception:
            errors += 1
        n += 1
        if n >= limit:
            break
    if n >= limit:
        break
print(json.dumps({{"files": n, "errors": errors, "seconds": time.monotonic() - t}}))
"""

ENUM_BASELINE = """
import json, time
import smbclient
host, port, share, user, password = {args!r}
smbclient.register_session(host, username=user, password=password, port=port)
t = time.monotonic(); n = 0
for _folder, _dirs, names in smbclient.walk(rf"\\\\{{host}}\\{{share}}", port=port):
    n += len(names)
print(json.dumps({{"files": n, "seconds": time.monotonic() - t}}))
"""

ENUM_OURS = """
import json, threading, time
from orthanc_nas.config import Connection
from orthanc_nas.sources.smb import SmbSource
host, port, share, user, password = {args!r}
source = SmbSource(Connection(Type="smb", Host=host, Port=port, Share=share, Username=user, Password=password))
source.check_root()  # connected, as the indexer is when its walk starts
best = None
for _ in range(3):
    t = time.monotonic()
    n = sum(1 for _ in source.walk(threading.Event()))
    seconds = time.monotonic() - t
    best = seconds if best is None else min(best, seconds)
print(json.dumps({{"files": n, "seconds": best}}))
"""

CORE = """
import contextlib, io, json, tempfile, time
from orthanc_nas.cli import main
host, port, share, user = {args!r}
data = tempfile.mkdtemp(prefix="nas-smb-bench-")
out = io.StringIO()
t = time.monotonic()
with contextlib.redirect_stdout(out):
    main(["index", f"smb://{{user}}@{{host}}:{{port}}/{{share}}", "--data", data, "--quiet", "--full"])
seconds = time.monotonic() - t
status = json.loads(out.getvalue())
print(json.dumps({{"files": status["files_processed"], "errors": status["errors"], "seconds": seconds,
                  "phase": status["phase"], "error_samples": status["error_samples"],
                  "workers_at_end": status["workers"], "warnings": status["warnings"]}}))
"""

SMB_ECHO = """
import json, time
import smbclient
host, port, user, password, count = {args!r}
session = smbclient.register_session(host, username=user, password=password, port=port)
times = []
for _ in range(count):
    t = time.perf_counter()
    session.connection.echo(sid=session.session_id)
    times.append(time.perf_counter() - t)
print(json.dumps({{"times": times}}))
"""


def run_child(code: str, env: dict | None = None, timeout: float = 900) -> dict:
    """Run Python code in a child process that prints one JSON line; returns it."""
    done = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env or CHILD_ENV, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f"benchmark child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def traversable_by_others(path: Path) -> bool:
    """Whether smbd, reading as nasuser, can reach `path` (o+x on every folder above, o+rx on it)."""
    for folder in [path, *path.parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH or (folder == path and not mode & stat.S_IROTH):
            return False
    return True


def share_folder(files: int) -> tuple[Path, bool]:
    """The corpus of index_bench, opened to smbd; or, if a folder above it is closed, a corpus of its own."""
    root = corpus(files)
    for folder in (root.parent.parent, root.parent, root):  # var/, var/bench/, the corpus: made by us
        folder.chmod(folder.stat().st_mode | stat.S_IROTH | stat.S_IXOTH)
    if traversable_by_others(root):
        return root, False
    own = Path(make_share_dir("nas-smb-bench-"))
    print(f"  {root} is not reachable for the Samba user: writing a corpus in {own}", flush=True)
    write_corpus(str(own), files)
    return own, True


def rate(result: dict) -> float:
    return result["files"] / result["seconds"] if result["seconds"] else 0.0


def echo_rtt(port: int, server: SambaServer, count: int = 200) -> dict:
    times = run_child(SMB_ECHO.format(args=(server.host, port, server.user, server.password, count)))["times"]
    times = sorted(times[10:])  # the first ones warm the connection
    return {"median_ms": round(statistics.median(times) * 1000, 3), "min_ms": round(times[0] * 1000, 3),
            "p90_ms": round(times[int(len(times) * 0.9)] * 1000, 3)}


class ClientProcesses:
    """Samples, every `interval` seconds, Orthanc's SMB client processes: how many, and their private memory."""

    def __init__(self, orthanc_pid: int, interval: float = 1.0):
        self.pid, self.interval = orthanc_pid, interval
        self.peak_count = 0
        self.peak_private_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            count, private = 0, 0
            for child in smb_client_processes(self.pid):
                try:
                    private += child.memory_full_info().uss
                    count += 1
                except psutil.NoSuchProcess:
                    pass
            self.peak_count = max(self.peak_count, count)
            self.peak_private_mb = max(self.peak_private_mb, private / 2**20)

    def __enter__(self) -> ClientProcesses:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def in_orthanc(server: SambaServer, port: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="nas-smb-bench-orthanc-") as work:
        connection = {"Type": "smb", "Host": server.host, "Port": port, "Share": server.share,
                      "Username": server.user, "Password": server.password}
        orthanc = OrthancServer(work, {"Connection": connection}).start()
        try:
            started = time.monotonic()
            with ClientProcesses(orthanc.proc.pid) as clients:
                status = orthanc.index(full=True, timeout=1800)
            seconds = time.monotonic() - started
        except Exception:
            kept = REPO / "var" / "bench" / "smb-orthanc-failed.log"
            kept.write_text(orthanc.log())
            print(f"  Orthanc failed (exit code {orthanc.proc.poll()}); its log: {kept}", flush=True)
            raise
        finally:
            orthanc.stop()
    return {"files": status["files_processed"], "errors": status["errors"], "seconds": seconds,
            "phase": status["phase"], "error_samples": status["error_samples"],
            "workers_at_end": status["workers"], "warnings": status["warnings"],
            "smb_client_processes_peak": clients.peak_count,
            "smb_client_private_mb_peak": round(clients.peak_private_mb, 1)}


def children_cpu() -> float:
    """CPU seconds of this process's children that have ended (their own children included)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def smbd_cpu(server: SambaServer) -> float:
    """CPU seconds of smbd so far: the main process, its connection processes, those that ended."""
    main = psutil.Process(server.proc.pid)
    total = sum(main.cpu_times())  # user, system, and the children it reaped
    for child in main.children(recursive=True):
        try:
            times = child.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def measure(server: SambaServer, port: int, args, proxy: ProxyProcess | None, orthanc: bool) -> dict:
    """Every contender against the smbd reached on `port` (directly, or through `proxy`)."""
    s = server
    results: dict = {}

    def counted(key: str, fn) -> None:
        """Run a contender `--runs` times; keep the fastest complete run (the least disturbed by other work)."""
        runs = []
        for _ in range(args.runs):
            before = proxy.counts()[0] if proxy else 0
            cpu, nas_cpu = children_cpu(), smbd_cpu(s)
            r = fn()
            files = max(r["files"], 1)
            r["client_cpu_ms_per_file"] = round((children_cpu() - cpu) / files * 1000, 3)
            r["smbd_cpu_ms_per_file"] = round((smbd_cpu(s) - nas_cpu) / files * 1000, 3)
            if proxy:
                r["bytes_per_file"] = round((proxy.counts()[0] - before) / files)
            print(f"    {key}: {rate(r):,.1f} files/s, CPU per file: client {r['client_cpu_ms_per_file']} ms, "
                  f"smbd {r['smbd_cpu_ms_per_file']} ms", flush=True)
            runs.append(r)
        results[key] = max(runs, key=lambda r: (r["files"], rate(r)))  # a complete run first
        results[key]["runs_files_per_second"] = [round(rate(r), 1) for r in runs]

    counted("baseline", lambda: run_child(BASELINE.format(
        args=(s.host, port, s.share, s.user, s.password, args.baseline_files))))
    env = dict(CHILD_ENV, NAS_PASSWORD=s.password)
    counted("core", lambda: run_child(CORE.format(args=(s.host, port, s.share, s.user)), env=env))
    if orthanc:
        counted("orthanc", lambda: in_orthanc(s, port))
    results["enum_ours"] = run_child(ENUM_OURS.format(args=(s.host, port, s.share, s.user, s.password)))
    results["enum_baseline"] = run_child(ENUM_BASELINE.format(args=(s.host, port, s.share, s.user, s.password)))
    results["echo_rtt"] = echo_rtt(port, s)
    for r in results.values():
        if "seconds" in r:
            r["files_per_second"] = round(rate(r), 1)
    base = rate(results["baseline"])
    for key in ("core", "orthanc"):
        if key in results:
            results[key]["ratio"] = round(rate(results[key]) / base, 2) if base else None
    results["enum_ours"]["ratio"] = round(rate(results["enum_ours"]) / rate(results["enum_baseline"]), 2)
    return results


def table(title: str, r: dict, baseline_files: int) -> None:
    print(f"\n{title} (SMB echo round trip: median {r['echo_rtt']['median_ms']} ms, "
          f"min {r['echo_rtt']['min_ms']} ms)")
    print(f"  {'contender':52} {'files/s':>9} {'× baseline':>11} {'bytes/file':>11} {'files':>7} {'errors':>7}")
    rows = [("baseline", f"baseline: smbclient.walk + dcmread(open_file) [first {baseline_files}]"),
            ("core", "plugin's indexer, core (python -m orthanc_nas index smb://)"),
            ("orthanc", "plugin inside Orthanc (POST /nas/index)")]
    for key, label in rows:
        if key not in r:
            continue
        x = r[key]
        ratio = f"{x['ratio']:.1f}" if "ratio" in x else "1.0"
        size = f"{x['bytes_per_file']:,}" if "bytes_per_file" in x else "-"
        print(f"  {label:52} {x['files_per_second']:9,.1f} {ratio:>11} {size:>11} {x['files']:7} {x['errors']:7}")
    if "orthanc" in r:
        x = r["orthanc"]
        print(f"  {'SMB client processes of Orthanc, at most':52} {x['smb_client_processes_peak']:9} "
              f"(private memory {x['smb_client_private_mb_peak']:.0f} MB in all)")
    print(f"  {'enumeration: SmbSource.walk (parallel listing, best of 3)':52} "
          f"{r['enum_ours']['files_per_second']:9,.0f} {r['enum_ours']['ratio']:11.1f}")
    print(f"  {'enumeration: smbclient.walk':52} {r['enum_baseline']['files_per_second']:9,.0f} {'1.0':>11}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--baseline-files", type=int, default=1000, help="files the baseline reads (time box)")
    parser.add_argument("--delay-ms", type=float, default=2.0, help="added each way by the slow-LAN proxy (0: skip)")
    parser.add_argument("--no-orthanc", action="store_true", help="skip the runs inside a real Orthanc")
    parser.add_argument("--runs", type=int, default=2, help="runs of each contender; the fastest is kept")
    args = parser.parse_args(argv)

    root, own = share_folder(args.files)
    load = os.getloadavg()
    results: dict = {"cpus": os.cpu_count(), "files": args.files, "baseline_files": args.baseline_files,
                     "delay_ms_each_way": args.delay_ms, "load_average_before": [round(x, 2) for x in load]}
    print(f"Indexing {args.files} files over SMB on {os.cpu_count()} cores (load average {load[0]:.2f})",
          flush=True)
    server = SambaServer(str(root)).start()
    try:
        print("  loopback", flush=True)
        results["loopback"] = measure(server, server.port, args, None, not args.no_orthanc)
        if args.delay_ms:  # the proxy also counts what the NAS sends: bytes per file
            with ProxyProcess(server.port, args.delay_ms / 1000) as proxy:
                print(f"  through a proxy adding {args.delay_ms:g} ms each way", flush=True)
                results["delayed"] = measure(server, proxy.port, args, proxy, not args.no_orthanc)
    finally:
        server.cleanup()
        if own:
            shutil.rmtree(root, ignore_errors=True)
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    table("Loopback Samba", results["loopback"], args.baseline_files)
    if "delayed" in results:
        table(f"Through the proxy, +{args.delay_ms:g} ms each way", results["delayed"], args.baseline_files)
    out = REPO / "var" / "bench" / "smb-results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"\nfigures in {out.relative_to(REPO)}")
    return results


if __name__ == "__main__":
    main()
