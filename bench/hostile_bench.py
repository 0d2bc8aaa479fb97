"""What the defences against a hostile NAS and hostile requests cost.

    .venv/bin/python bench/hostile_bench.py [--files 2000] [--runs 3]

- head read: a 16 KiB head of files four folders deep, through `open()` on the path (what reading did
  before) and through `local.open_beneath` (each folder, then the file, opened with O_NOFOLLOW relative
  to the one before), best of `--runs`, in µs per file;
- JSON bounds: `http.check_json_shape` on a body near the 1 MiB limit, next to `json.loads` of it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from orthanc_nas.http import check_json_shape  # noqa: E402
from orthanc_nas.sources.local import open_beneath  # noqa: E402

HEAD = 16 * 1024


def best_us(read, paths: list[str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        for rel in paths:
            read(rel)
        best = min(best, (time.perf_counter() - started) / len(paths) * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        paths = [f"p{i % 20}/study {i % 7}/series {i % 3}/IM{i}.dcm" for i in range(args.files)]
        for rel in paths:
            os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
            Path(root, rel).write_bytes(b"x" * HEAD)

        def by_path(rel: str) -> bytes:
            with open(os.path.join(root, rel), "rb", buffering=0) as fh:
                return fh.read(HEAD)

        def beneath(rel: str) -> bytes:
            with os.fdopen(open_beneath(root, rel), "rb", buffering=0) as fh:
                return fh.read(HEAD)

        plain, confined = best_us(by_path, paths, args.runs), best_us(beneath, paths, args.runs)
        print(f"head read, open() on the path: {plain:.1f} µs per file")
        print(f"head read, open_beneath():     {confined:.1f} µs per file (+{confined - plain:.1f} µs)")

    body = b'{"series": [' + b",".join(b'"%020d"' % i for i in range(40_000)) + b"]}"
    started = time.perf_counter()
    check_json_shape(body)
    shape_ms = (time.perf_counter() - started) * 1000
    started = time.perf_counter()
    json.loads(body)
    loads_ms = (time.perf_counter() - started) * 1000
    print(f"JSON body of {len(body) // 1024} KiB: check_json_shape {shape_ms:.1f} ms, json.loads {loads_ms:.1f} ms")


if __name__ == "__main__":
    main()
