"""The DICOM node's C-MOVE alone, without Orthanc: the node runs in this process on a local NAS folder and
`movescu` asks it to move a series to `storescp` (writing to disk), alternating two modes in one run:
"node" (as the node runs) and "as is" (pynetdicom's own pending response after every file, command sets
encoded twice, its logging handlers bound). `--profile FILE` runs pynetdicom's association and DUL threads
under cProfile (the reader threads are not in it) and prints where their time goes.

    PYTHONPATH=plugin .venv/bin/python -m bench.node_move_bench [--files 1000] [--kb 128] [--runs 3]
                                                                [--modes node "as is"] [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import tempfile
import time
from pathlib import Path

from pydicom import dcmread
from tests.support.dcmtk import StoreSCP, run
from tests.support.dicom import write_series
from tests.support.orthanc import free_port

from orthanc_nas.catalog import Catalog
from orthanc_nas.config import parse_dicom_server
from orthanc_nas.dicom import DicomNode, Peers, RetrievalAudit
from orthanc_nas.indexer import Indexer
from orthanc_nas.sources.local import LocalSource
from orthanc_nas.status import IndexStatus


def profile_threads() -> list:
    """cProfile each association and DUL thread of pynetdicom (where the node's work happens)."""
    from pynetdicom.association import Association
    from pynetdicom.dul import DULServiceProvider

    profiles: list[cProfile.Profile] = []

    def wrap(run):
        def profiled(self):
            profile = cProfile.Profile()
            profiles.append(profile)
            profile.runcall(run, self)
        return profiled

    Association.run_reactor = wrap(Association.run_reactor)
    DULServiceProvider.run_reactor = wrap(DULServiceProvider.run_reactor)
    return profiles


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--kb", type=int, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", nargs="+", default=["node", "as is"], choices=["node", "as is"])
    parser.add_argument("--profile", metavar="FILE", help="cProfile the node's association threads into FILE")
    args = parser.parse_args()
    profiles = profile_threads() if args.profile else None
    os.environ["TCP_NODELAY"] = "1"  # dcmtk's storescp/movescu without Nagle's algorithm (Debian's build)
    work = Path(tempfile.mkdtemp(prefix="node-move-bench-"))
    node = None
    try:
        paths = write_series(work / "nas" / "S", args.files, PatientID="BENCH", pixel_bytes=args.kb * 1024)
        size = sum(p.stat().st_size for p in paths) / 1e6
        series = dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID
        source = LocalSource(str(work / "nas"))
        data = str(work / "data")
        catalog = Catalog(data)
        Indexer(catalog, IndexStatus(data), lambda: source, workers=2, parse_processes=0).run()
        scp_port = free_port()
        settings = parse_dicom_server({"Enabled": True, "Port": 0, "AllowedCallers": "*",
                                       "Destinations": {"WS1": ["127.0.0.1", scp_port]}}, "127.0.0.1")
        node = DicomNode(settings, catalog, lambda: source, Peers(settings), RetrievalAudit(data))
        assert node.start()
        print(f"{args.files} files, {size:.0f} MB")
        from orthanc_nas.dicom import pynetdicom_internals
        every = pynetdicom_internals.PENDING_EVERY
        modes = args.modes  # "node": its adjustments; "as is": pynetdicom's own pending responses and encoding
        results: dict[str, list[float]] = {mode: [] for mode in modes}
        for i in range(args.runs * len(modes)):
            mode = modes[i % len(modes)]
            pynetdicom_internals.PENDING_EVERY = every if mode == "node" else 0.0
            pynetdicom_internals.encode_command_sets_once(mode == "node")
            pynetdicom_internals.QUIET = mode == "node"
            with StoreSCP(work / f"ws{i}", port=scp_port) as scp:
                cpu = time.process_time()
                started = time.perf_counter()
                result = run("movescu", "-S", "-aet", "WS1", "-aec", "NAS", "-aem", "WS1", "127.0.0.1",
                             node.port, "-k", "QueryRetrieveLevel=SERIES", "-k", f"SeriesInstanceUID={series}")
                elapsed = time.perf_counter() - started
                cpu = time.process_time() - cpu
                assert result.returncode == 0, result.stderr
                received = len(scp.files())
            results[mode].append(received / elapsed)
            print(f"  {mode:6s} run {i // len(modes) + 1}: C-MOVE {received} files in {elapsed:.2f} s: {received / elapsed:.0f} files/s, "
                  f"{size / elapsed:.0f} MB/s; node CPU {cpu * 1000 / max(received, 1):.2f} ms/file")
            shutil.rmtree(work / f"ws{i}", ignore_errors=True)
        for mode, rates in results.items():
            print(f"  {mode:6s} best {max(rates):.0f} files/s, median {sorted(rates)[len(rates) // 2]:.0f} files/s")
        if profiles is not None:
            stats = pstats.Stats(profiles[0])
            for extra in profiles[1:]:
                stats.add(extra)
            stats.dump_stats(args.profile)
            stats.sort_stats("tottime").print_stats(25)
    finally:
        if node is not None:
            node.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
