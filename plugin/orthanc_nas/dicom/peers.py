"""Who may call the node, and where C-MOVE may send: AE titles with their hosts.

By default the callers are the AE titles and hosts of Orthanc's `DicomModalities`
(read at each association, so modalities added through Orthanc's REST API count),
and Orthanc itself (its `DicomAet`) from this host. `DicomServer.AllowedCallers`
replaces that list (`"*"`: anyone). Destinations of C-MOVE are Orthanc's
modalities, `DicomServer.Destinations` and Orthanc itself (its `DicomPort`).
AE titles compare without their padding spaces (PS3.5 6.2), hosts by address.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from ..config import DicomServer

log = logging.getLogger("orthanc_nas")


@dataclass(frozen=True, slots=True)
class Peer:
    """A DICOM application entity: AE title, host (name or address) and port (None for callers only)."""

    aet: str
    host: str | None = None
    port: int | None = None


@functools.lru_cache(maxsize=256)
def _addresses(host: str) -> frozenset[str]:
    """The addresses a host name stands for (itself when it is an address); empty if it does not resolve."""
    try:
        return frozenset({str(ipaddress.ip_address(host))})
    except ValueError:
        pass
    try:
        return frozenset(info[4][0] for info in socket.getaddrinfo(host, None))
    except OSError:
        return frozenset()


def _plain(address: str) -> str:
    """An IPv4 address mapped into IPv6 (`::ffff:127.0.0.1`) as IPv4."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped or ip)


def is_this_host(address: str) -> bool:
    """Whether a caller's address is this machine: loopback, or one of the host name's addresses."""
    address = _plain(address)
    try:
        if ipaddress.ip_address(address).is_loopback:
            return True
    except ValueError:
        return False
    return address in _addresses(socket.gethostname())


def host_matches(host: str | None, address: str) -> bool:
    """Whether `address` (a caller's IP) is `host` (None: any host)."""
    if not host:
        return True
    address = _plain(address)
    if host in ("localhost",) or _addresses(host) & {"127.0.0.1", "::1"}:
        return is_this_host(address)
    return address in _addresses(host)


class Peers:
    """The callers and destinations of the node, from the settings and Orthanc's modalities.

    `modalities()` gives Orthanc's `DicomModalities` as it is now (the glue reads Orthanc's REST API);
    `orthanc` is Orthanc's own AE (DicomAet, this host, DicomPort; no port when its DICOM server is off).
    """

    def __init__(self, settings: DicomServer, modalities: Callable[[], list[Peer]] = list,
                 orthanc: Peer | None = None):
        self.settings = settings
        self.modalities = modalities
        self.orthanc = orthanc

    def _modalities(self) -> list[Peer]:
        try:
            return list(self.modalities())
        except Exception:  # Orthanc stopping, its REST API refusing: no modality is known then
            log.exception("the DICOM node could not read Orthanc's modalities")
            return []

    def allowed(self, aet: str, address: str) -> bool:
        """Whether a caller may associate (PS3.8 9.3.4: rejected with "calling AE title not recognized")."""
        aet = aet.strip()
        callers = self.settings.AllowedCallers
        if callers == "*":
            return True
        if self.orthanc is not None and aet == self.orthanc.aet and is_this_host(address):
            return True
        if callers is None:
            known = [(p.aet, p.host) for p in self._modalities()]
        else:
            known = [(c["AET"], c.get("Host")) for c in callers]
        return any(aet == known_aet.strip() and host_matches(host, address) for known_aet, host in known)

    def destination(self, aet: str) -> Peer | None:
        """Where a C-MOVE to `aet` goes (PS3.4 C.4.2.1.4.1: the Move Destination), or None if unknown."""
        aet = aet.strip()
        for peer in self._modalities():
            if peer.aet.strip() == aet and peer.host and peer.port:
                return peer
        target = self.settings.Destinations.get(aet)
        if target is not None:
            return Peer(aet, target[0], target[1])
        if self.orthanc is not None and self.orthanc.aet == aet and self.orthanc.port:
            return self.orthanc
        return None
