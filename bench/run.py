"""`make bench`: every benchmark in turn, each in a process of its own; figures go to stdout and var/bench/.

    python bench/run.py [name ...]      # names: index, smb, search, share, dicom (default: all)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = {
    "index": "index_bench.py",
    "smb": "smb_bench.py",
    "search": "search_bench.py",
    "share": "share_bench.py",
    "dicom": "dicom_bench.py",
}


def main(names: list[str]) -> int:
    failed = []
    for name in names or list(BENCHMARKS):
        script = HERE / BENCHMARKS[name]
        if not script.exists():
            continue
        print(f"\n=== {name}: {script.name}", flush=True)
        started = time.monotonic()
        if subprocess.run([sys.executable, str(script)]).returncode:
            failed.append(name)
        print(f"=== {name}: {time.monotonic() - started:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
