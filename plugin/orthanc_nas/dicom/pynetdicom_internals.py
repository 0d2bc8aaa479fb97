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

`fewer_pendings(assoc)`: at most one pending C-MOVE/C-GET response every `PENDING_EVERY` seconds, not one
per file. `encode_command_sets_once()`: each command set encoded once, not twice. `quiet(assoc)`: no
standard logging handlers on a sending association when their output would be dropped anyway.

`failure_response(assoc, status)`: pynetdicom 3.0 lets a C-MOVE or C-GET handler give no status of its own
before its sub-operations (the first yield is the destination, resp. the count): an exception there is
answered 0xC514 or 0xC413 ("Unable to process"), without a comment. This puts the handler's status and
comment on that response.
"""

from __future__ import annotations

import logging
import struct
import threading
import time

from pynetdicom import _handlers, dimse_messages, evt
from pynetdicom.dimse_messages import DIMSEMessage
from pynetdicom.dimse_primitives import C_GET, C_MOVE


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


PENDING_EVERY = 0.5  # seconds between two pending C-MOVE/C-GET responses


def fewer_pendings(assoc, every: float | None = None):
    """Let at most one pending (0xFF00) C-MOVE/C-GET response every `every` seconds (default `PENDING_EVERY`)
    through `assoc.dimse.send_msg`; every other message goes as pynetdicom sends it. PS3.4 C.4.2.3.1 and
    C.4.3.3.1: pending responses are optional ("Optionally, the SCP may generate responses ... with status
    equal to Pending"); those sent carry pynetdicom's counts (Remaining, Completed, Failed, Warning) of the
    moment, the final response the totals. pynetdicom 3.0 sends one after each C-STORE sub-operation: a
    message a file, about as much of the node's work as the C-STORE request itself. Returns a callable that
    puts pynetdicom's own `send_msg` back."""
    dimse = assoc.dimse
    send_msg = dimse.send_msg
    interval = PENDING_EVERY if every is None else every
    last = [time.monotonic()]

    def send(primitive, context_id):
        if isinstance(primitive, (C_MOVE, C_GET)) and primitive.Status == 0xFF00:
            now = time.monotonic()
            if now - last[0] < interval:
                return
            last[0] = now
        send_msg(primitive, context_id)

    dimse.send_msg = send

    def restore() -> None:
        dimse.__dict__.pop("send_msg", None)

    return restore


def failure_response(assoc, status) -> None:
    """Give the next C-MOVE/C-GET failure response ("Unable to process", 0xCxxx) that pynetdicom sends on
    `assoc` the Status and ErrorComment of `status` (a Dataset); one message, then `send_msg` is as before.
    Call it just before the handler raises."""
    dimse = assoc.dimse
    send_msg = dimse.send_msg
    own = "send_msg" in dimse.__dict__  # another wrapper (`fewer_pendings`) is in place

    def send(primitive, context_id):
        if isinstance(primitive, (C_MOVE, C_GET)) and 0xC000 <= (primitive.Status or 0) <= 0xCFFF:
            primitive.Status = int(status.Status)
            primitive.ErrorComment = str(status.get("ErrorComment", "")) or None
            if own:
                dimse.send_msg = send_msg
            else:
                dimse.__dict__.pop("send_msg", None)
        send_msg(primitive, context_id)

    dimse.send_msg = send


_encode = dimse_messages.encode
_group_length = DIMSEMessage._set_command_group_length
_encoded = threading.local()  # the command set `_set_command_group_length` last encoded in this thread


def _set_command_group_length(self) -> None:
    """pynetdicom's `DIMSEMessage._set_command_group_length` (the group length is the length of the rest of the
    command set, PS3.7 E.1), keeping the command set's encoding for `encode_msg`, which encodes it again."""
    del self.command_set.CommandGroupLength
    rest = _encode(self.command_set, True, True)
    self.command_set.CommandGroupLength = len(rest)
    # (0000,0000) UL comes first; Implicit VR Little Endian: tag, 4-byte length, 4-byte value (PS3.5 7.1.2)
    _encoded.last = (self.command_set, struct.pack("<HHII", 0, 0, 4, len(rest)) + rest)


def _encode_once(ds, is_implicit_vr: bool, is_little_endian: bool, deflated: bool = False):
    last = getattr(_encoded, "last", None)
    if last is not None:
        _encoded.last = None
        if last[0] is ds and is_implicit_vr and is_little_endian and not deflated:
            return last[1]
    return _encode(ds, is_implicit_vr, is_little_endian, deflated)


def encode_command_sets_once(once: bool = True) -> None:
    """Have pynetdicom encode each command set it sends once, not twice (once for its Command Group Length,
    once to send it): same bytes, less CPU a message. Idempotent; `once=False` puts pynetdicom's own code
    back (benchmarks)."""
    DIMSEMessage._set_command_group_length = _set_command_group_length if once else _group_length
    dimse_messages.encode = _encode_once if once else _encode


QUIET = True  # `quiet` unbinds pynetdicom's logging handlers (benchmarks set it False to compare)


def quiet(assoc) -> None:
    """Unbind pynetdicom's standard logging handlers of PDUs and DIMSE messages from `assoc` while the
    "pynetdicom" logger would drop what they log (below INFO): they format each message's description
    whatever the level (a C-STORE response: ~0.1 ms), and run for each 16 KB PDU."""
    if not QUIET or logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        return
    for event, handler in ((evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
                           (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler),
                           (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
                           (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler)):
        assoc.unbind(event, handler)
