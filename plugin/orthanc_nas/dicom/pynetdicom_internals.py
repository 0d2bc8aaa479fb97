"""The one place that reaches into pynetdicom's internals (tests/unit/test_dicom_node_core.py checks them).

`sender_only(assoc)`: in pynetdicom 3.0, an association we request runs a reactor thread that polls its
DIMSE queue (`dimse.get_msg(block=False)`) between pauses that `send_c_store` asks for. The pause is
not atomic (`_is_paused` is set before the reactor blocks on `_reactor_checkpoint`), so under load the
reactor sometimes takes the C-STORE response `send_c_store` waits for ("Received unexpected C-STORE
service message"), and that sub-operation, then every later one, fails after the DIMSE timeout. Seen
here on about one C-MOVE of 1,000 files in three with a fast peer. The associations the node opens to
C-MOVE destinations only send; their reactor never needs a message, so its non-blocking reads are
answered "nothing" and every response goes to the `send_c_store` that waits for it.

`prompt(assoc)`: pynetdicom's DUL reactor sleeps `_run_loop_delay` (1 ms) whenever it finds nothing to do,
so each C-STORE response waits up to 1 ms before it is read, and each C-MOVE pending response up to 1 ms
before it is sent. While the node sends, its associations poll every `PROMPT_DELAY` instead (measured:
C-STOREs of 132 KB files to storescp 204-255 -> 270-320 files/s, with less CPU per file, not more).
"""

from __future__ import annotations


def sender_only(assoc) -> None:
    """Keep the reactor of an association that only sends C-STOREs from taking their responses."""
    dimse = assoc.dimse
    get_msg = dimse.get_msg

    def blocking_only(block: bool = False):
        return get_msg(block=True) if block else (None, None)

    dimse.get_msg = blocking_only


PROMPT_DELAY = 0.0002  # seconds the DUL reactor sleeps when idle, while the node sends


def prompt(assoc, delay: float | None = None) -> float:
    """Set the idle sleep of the DUL reactor of `assoc` (seconds; default `PROMPT_DELAY`); the previous
    value, to restore it."""
    dul = assoc.dul
    before = dul._run_loop_delay
    dul._run_loop_delay = PROMPT_DELAY if delay is None else delay
    return before
