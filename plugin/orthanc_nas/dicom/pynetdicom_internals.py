"""The one place that reaches into pynetdicom's internals (tests/unit/test_dicom_node_core.py checks them).

`send_as_stored(assoc)`: see there.

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

from pynetdicom import _config


def sender_only(assoc) -> None:
    """Keep the reactor of an association that only sends C-STOREs from taking their responses."""
    dimse = assoc.dimse
    get_msg = dimse.get_msg

    def blocking_only(block: bool = False):
        return get_msg(block=True) if block else (None, None)

    dimse.get_msg = blocking_only


def send_as_stored(assoc) -> None:
    """Have `assoc.send_c_store` send a `StoredFile` as its stored bytes. pynetdicom sends a file given by
    path without decoding it (`_config.STORE_SEND_CHUNKED_DATASET`: it reads the meta group for the SOP
    class, instance and transfer syntax, then sends the rest of the file as the data set, in the
    presentation context of exactly that syntax), here the file the reader spooled; it is deleted once
    sent. Its
    C-MOVE and C-GET services call `send_c_store` with the datasets the handler yields; so does a job."""
    if getattr(assoc, "_nas_send_as_stored", False):
        return
    send_c_store = assoc.send_c_store

    def sending(dataset, *args, **kwargs):
        spooled = getattr(dataset, "spooled", None)
        if spooled is None:
            return send_c_store(dataset, *args, **kwargs)
        _config.STORE_SEND_CHUNKED_DATASET = True  # only files given by path: the node's, never others
        try:
            return send_c_store(spooled.name, *args, **kwargs)
        finally:
            spooled.close()

    assoc.send_c_store = sending
    assoc._nas_send_as_stored = True
