"""The NAS as a DICOM query/retrieve node (pynetdicom): `query` (C-FIND from the index), `retrieve`
(C-MOVE/C-GET from the NAS), `peers` (callers and destinations), `audit` (the `dicom` part of the
storage layer), `server` (the AE).

`DicomNode` and `Peers` are imported on first use (PEP 562): reading the audit (`GET
/nas/dicom/retrievals`) does not load pynetdicom, whose import in one of Orthanc 1.13's REST threads
overflows Python 3.14's parser stack."""

from .audit import RetrievalAudit

__all__ = ["DicomNode", "Peer", "Peers", "RetrievalAudit"]


def __getattr__(name: str):
    if name == "DicomNode":
        from .server import DicomNode

        return DicomNode
    if name in ("Peer", "Peers"):
        from . import peers

        return getattr(peers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
