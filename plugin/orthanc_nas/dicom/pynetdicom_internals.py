"""The one place that reaches into pynetdicom's internals (tests/unit/test_dicom_node_core.py checks them).

`sender_only(assoc)`: in pynetdicom 3.0, an association we request runs a reactor thread that polls its
DIMSE queue (`dimse.get_msg(block=False)`) between pauses that `send_c_store` asks for. The pause is
not atomic (`_is_paused` is set before the reactor blocks on `_reactor_checkpoint`), so under load the
reactor sometimes takes the C-STORE response `send_c_store` waits for ("Received unexpected C-STORE
service message"), and that sub-operation, then every later one, fails after the DIMSE timeout. Seen
here on about one C-MOVE of 1,000 files in three with a fast peer. The associations the node opens to
C-MOVE destinations only send; their reactor never needs a message, so its non-blocking reads are
answered "nothing" and every response goes to the `send_c_store` that waits for it.
"""

from __future__ import annotations


def sender_only(assoc) -> None:
    """Keep the reactor of an association that only sends C-STOREs from taking their responses."""
    dimse = assoc.dimse
    get_msg = dimse.get_msg

    def blocking_only(block: bool = False):
        return get_msg(block=True) if block else (None, None)

    dimse.get_msg = blocking_only
