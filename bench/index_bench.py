"""Indexing benchmark: the plugin's indexer against the naive baseline, in the same run.

    python bench/index_bench.py [--files 10000] [--big 100000]

Baseline: `os.walk` + a sequential `pydicom.dcmread(stop_before_pixels=True)`
per file, what a first script would do. Measured: files/s and peak RSS of

* the baseline,
* the core from the command line (`python -m orthanc_nas index`),
* the plugin inside a real Orthanc (`POST /nas/index` until done),
* enumeration alone (the parallel scandir walk against `os.walk` + `stat`),
* peak RSS while indexing `--big` files against `--files` files.

Every measured piece runs in a child process of its own, so RSS figures are
not mixed. The corpus (realistic headers, sparse 512×512 pixels) is made once
under var/bench/ and kept.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "plugin"), str(REPO / "bench")]

from tests.support.orthanc import OrthancServer  # noqa: E402

from corpus import write_corpus  # noqa: E402

PY = sys.executable
CHILD_ENV = dict(os.environ, PYTHONPATH=f"{REPO / 'plugin'}:{REPO}")


def corpus(files: int) -> Path:
    folder = REPO / "var" / "bench" / f"corpus-{files}"
    done = folder.with_suffix(".complete")  # beside the corpus, not in it: it is no DICOM file
    if not done.exists():
        shutil.rmtree(folder, ignore_errors=True)
        started = time.monotonic()
        summary = write_corpus(str(folder), files)
        print(f"  made corpus of {files} files in {time.monotonic() - started:.0f}s: {summary}", flush=True)
        done.write_text(json.dumps(summary))
    return folder


def watch(proc: subprocess.Popen | psutil.Process, until=None, interval: float = 0.05) -> dict:
    """Peak RSS (MB) of a process, and of it with its children, sampled until it ends or `until()` is true."""
    p = proc if isinstance(proc, psutil.Process) else psutil.Process(proc.pid)
    peak_main = peak_tree = 0
    while True:
        try:
            rss = p.memory_info().rss
            tree = rss + sum(c.memory_info().rss for c in p.children(recursive=True))
        except psutil.NoSuchProcess:
            break
        except psutil.AccessDenied:
            tree = rss
        peak_main, peak_tree = max(peak_main, rss), max(peak_tree, tree)
        if until is not None and until():
            break
        if isinstance(proc, subprocess.Popen) and proc.poll() is not None:
            break
        time.sleep(interval)
    return {"peak_rss_mb": round(peak_main / 2**20, 1), "peak_rss_with_children_mb": round(peak_tree / 2**20, 1)}


def run_child(code: str) -> dict:
    """Run Python code in a child process; it prints one JSON line; returns it with the child's peak RSS."""
    proc = subprocess.Popen([PY, "-c", code], stdout=subprocess.PIPE, env=CHILD_ENV, text=True)
    mem = watch(proc)
    out, _ = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed ({proc.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), **mem}


# What a first indexing script does: read each header, take the values an index needs.
BASELINE = """
import json, os, time, warnings
import pydicom
from orthanc_nas.headers import FIELDS
warnings.simplefilter("ignore")
t = time.monotonic(); n = 0
for folder, _, names in os.walk({root!r}):
    for name in names:
        try:
            ds = pydicom.dcmread(os.path.join(folder, name), stop_before_pixels=True)
            {values}
        except Exception:
            pass
        n += 1
print(json.dumps({{"files": n, "seconds": time.monotonic() - t}}))
"""
TAKE_VALUES = "row = {k: str(ds.get(k, '')) for k in FIELDS}"

CORE = """
import json, tempfile, time
from orthanc_nas.cli import main
import contextlib, io
data = tempfile.mkdtemp(prefix="nas-bench-")
t = time.monotonic()
out = io.StringIO()
with contextlib.redirect_stdout(out):
    main(["index", {root!r}, "--data", data, "--quiet"])
status = json.loads(out.getvalue())
print(json.dumps({{"files": status["files_processed"], "errors": status["errors"],
                  "seconds": time.monotonic() - t}}))
"""

ENUM_OURS = """
import json, threading, time
from orthanc_nas.sources.local import LocalSource
t = time.monotonic(); n = 0
for item in LocalSource({root!r}).walk(threading.Event()):
    n += 1
print(json.dumps({{"files": n, "seconds": time.monotonic() - t}}))
"""

ENUM_BASE = """
import json, os, time
t = time.monotonic(); n = 0
for folder, _, names in os.walk({root!r}):
    for name in names:
        os.stat(os.path.join(folder, name)); n += 1
print(json.dumps({{"files": n, "seconds": time.monotonic() - t}}))
"""


def in_orthanc(root: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix="nas-bench-orthanc-") as work:
        server = OrthancServer(work, {"Connection": {"Type": "local", "Path": str(root)}}).start()
        try:
            proc = psutil.Process(server.proc.pid)
            before = proc.memory_info().rss
            started = time.monotonic()
            assert server.post("/nas/index", json={"full": True}).status_code == 202
            finished = {}

            def done() -> bool:
                s = server.get("/nas/status").json()
                if not s["running"] and s["phase"] != "enumerating":
                    finished.update(s)
                    return True
                return False

            mem = watch(proc, until=done, interval=0.1)
            seconds = time.monotonic() - started
        finally:
            server.stop()
    return {"files": finished["files_processed"], "errors": finished["errors"], "seconds": seconds,
            "rss_before_mb": round(before / 2**20, 1), **mem}


def rate(result: dict) -> float:
    return result["files"] / result["seconds"] if result["seconds"] else 0.0


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--big", type=int, default=100000, help="corpus for enumeration and RSS growth (0: skip)")
    args = parser.parse_args(argv)

    root = corpus(args.files)
    results = {"cpus": os.cpu_count(), "files": args.files}
    print(f"Indexing {args.files} files on {os.cpu_count()} cores (page cache warm for every contender)")
    # warm the page cache once so the first contender pays no extra I/O
    run_child(ENUM_BASE.format(root=str(root)))
    results["baseline"] = run_child(BASELINE.format(root=str(root), values=TAKE_VALUES))
    # the same loop without touching any value: pydicom converts values lazily, so this is a floor
    results["dcmread_only"] = run_child(BASELINE.format(root=str(root), values="pass"))
    results["core_cli"] = run_child(CORE.format(root=str(root)))
    results["orthanc"] = in_orthanc(root)
    base = rate(results["baseline"])
    print(f"  {'contender':34} {'files/s':>9} {'× baseline':>11} {'peak RSS MB':>12} {'with children':>14}")
    for key, label in (("baseline", "baseline: os.walk + dcmread + values"),
                       ("dcmread_only", "  (dcmread, values never read)"), ("core_cli", "core (python -m orthanc_nas)"),
                       ("orthanc", "plugin inside Orthanc")):
        r = results[key]
        r["files_per_second"] = round(rate(r), 1)
        r["ratio"] = round(rate(r) / base, 2) if base else None
        print(f"  {label:34} {r['files_per_second']:9.1f} {r['ratio']:11.2f} {r['peak_rss_mb']:12.1f} "
              f"{r['peak_rss_with_children_mb']:14.1f}")
    if args.big:
        big = corpus(args.big)
        run_child(ENUM_BASE.format(root=str(big)))
        results["enum_ours"] = run_child(ENUM_OURS.format(root=str(big)))
        results["enum_base"] = run_child(ENUM_BASE.format(root=str(big)))
        print(f"Enumerating {args.big} files: parallel scandir {rate(results['enum_ours']):,.0f} files/s, "
              f"os.walk + stat {rate(results['enum_base']):,.0f} files/s")
        results["core_cli_big"] = run_child(CORE.format(root=str(big)))
        small_rss, big_rss = results["core_cli"]["peak_rss_mb"], results["core_cli_big"]["peak_rss_mb"]
        print(f"Peak RSS of the core indexing {args.files} files: {small_rss} MB; {args.big} files: {big_rss} MB "
              f"(growth {big_rss - small_rss:+.1f} MB); {rate(results['core_cli_big']):.0f} files/s")
    out = REPO / "var" / "bench" / "index-results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
