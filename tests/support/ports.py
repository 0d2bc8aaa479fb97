"""Free TCP ports for the servers the tests start (Orthanc, its DICOM and share listeners, PostgreSQL, dcmtk).

A port is chosen below the kernel's ephemeral range (`ip_local_port_range`, 32768–60999 by default), from
which the local end of every outgoing connection is taken: a port chosen by binding to 0 lies in that range,
so between choosing it and the server binding it, any client socket (a test's HTTP session, smbclient,
psycopg) could take it and the server would stop with "Address already in use". Below the range only a
server binding on purpose can, and this process never hands out the same port twice.
"""

from __future__ import annotations

import random
import socket

_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, outside the ephemeral range, not handed out before by this process."""
    high = _ephemeral_low()
    low = max(1024, high - 12000)
    for _ in range(200):
        port = random.randrange(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port between {low} and {high}")
