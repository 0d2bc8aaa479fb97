"""A node's part of a cluster run, as the other nodes sum it (`cluster.settled`)."""

from orthanc_nas.cluster import combined, settled

PART = {"enumerated_files": 90, "files_processed": 70, "files_skipped": 5, "errors": 3, "phase": "indexing",
        "in_progress": [["P1/CT", True, {"enumerated_files": 40, "files_processed": 20, "errors": 1}],
                        ["P2/CT", True, {"enumerated_files": 10, "files_processed": 10, "files_skipped": 5}]],
        "lost": {"enumerated_files": 0, "files_processed": 0}}


def test_a_part_counts_the_items_it_holds_and_drops_those_another_node_took_over():
    held = [PART["in_progress"][1][2]]  # P2/CT still this node's; P1/CT taken over (its lease ran out)
    part = settled(PART, held)
    assert (part["enumerated_files"], part["files_processed"], part["files_skipped"], part["errors"]) == (50, 50, 5, 2)
    assert "in_progress" not in part and "lost" not in part and part["phase"] == "indexing"


def test_a_part_that_holds_all_its_items_counts_everything_but_what_it_lost():
    part = settled({**PART, "lost": {"files_processed": 7, "enumerated_files": 7}}, [c for *_, c in PART["in_progress"]])
    assert (part["enumerated_files"], part["files_processed"], part["errors"]) == (83, 63, 3)
    total = combined({"enumerated_files": 100, "files_processed": 100, "running": False}, [part])
    assert (total["enumerated_files"], total["files_processed"]) == (183, 163)
