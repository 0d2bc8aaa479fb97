"""The NAS as a DICOM query/retrieve node (pynetdicom): `query` (C-FIND from the index), `retrieve`
(C-MOVE/C-GET from the NAS), `peers` (callers and destinations), `audit` (dicom.db), `server` (the AE)."""

from .audit import RetrievalAudit
from .peers import Peer, Peers
from .server import DicomNode

__all__ = ["DicomNode", "Peer", "Peers", "RetrievalAudit"]
