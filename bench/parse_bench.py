"""Header parsing alone: heads per second on one core, optionally against another version of the code.

    python bench/parse_bench.py [--files 10000] [--heads 200] [--rounds 300] [--against OTHER/plugin]

Reads the first 16 KiB of `--heads` files of the benchmark corpus (bench/corpus.py) and parses them with
`headers.parse_head` again and again. With `--against` (the `plugin/` folder of another checkout, e.g.
made with `git archive main plugin | tar -x -C /tmp/main`), both versions parse the same heads in
alternating rounds in one process, so a busy machine slows both alike: the median ratio of their round
times is the figure to trust, more than either throughput.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "plugin"), str(REPO / "bench")]

from orthanc_nas import headers  # noqa: E402


def load_other(plugin: Path):
    path = plugin / "orthanc_nas" / "headers.py"
    spec = importlib.util.spec_from_file_location("other_orthanc_nas.headers", path,
                                                  submodule_search_locations=None)
    package = importlib.util.spec_from_file_location("other_orthanc_nas", plugin / "orthanc_nas" / "__init__.py",
                                                     submodule_search_locations=[str(plugin / "orthanc_nas")])
    sys.modules["other_orthanc_nas"] = importlib.util.module_from_spec(package)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=10000, help="the corpus to take heads from")
    parser.add_argument("--heads", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--against", type=Path, help="the plugin/ folder of another version")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    from index_bench import corpus
    root = corpus(args.files)
    heads = []
    for path in sorted(root.rglob("*.dcm"))[:args.heads]:
        with open(path, "rb") as fh:
            heads.append(fh.read(headers.HEAD_SIZE))
    versions = {"this": headers}
    if args.against:
        versions["other"] = load_other(args.against.resolve())
    times: dict[str, list[float]] = {name: [] for name in versions}
    for n in range(args.rounds):
        for name in (list(versions) if n % 2 else list(reversed(versions))):
            parse = versions[name].parse_head
            started = time.perf_counter()
            for head in heads:
                parse(head, False)
            times[name].append(time.perf_counter() - started)
    result = {f"{name}_heads_per_second": round(len(heads) / min(t)) for name, t in times.items()}
    if args.against:
        ratios = [a / b for a, b in zip(times["this"], times["other"], strict=True)]
        result["median_time_ratio_this_over_other"] = round(statistics.median(ratios), 3)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
