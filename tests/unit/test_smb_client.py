"""The SMB client processes' wire format and the source's set-up (no server needed)."""

from __future__ import annotations

import signal
import socket
import sys
import threading

import pytest

from orthanc_nas.config import Connection
from orthanc_nas.errors import ConfigError
from orthanc_nas.sources import smb_child
from orthanc_nas.sources.smb import SmbSource, _exit_reason

CONNECTION = Connection(Type="smb", Host="nas", Share="dicom", Username="u", Password="p")


def test_messages_cross_whole_whatever_their_size():
    a, b = socket.socketpair()
    big = bytes(range(256)) * 8192  # 2 MiB: more than one socket buffer, so it arrives in pieces
    sent = [("head", "李^小龙/IM 0001.dcm", 16384), ("ok", big), ("error", 13, "Permission denied", True),
            ("ok", [("a b", True, 0, 1), ("c", False, 5_000_000_000, 2)])]
    writer = threading.Thread(target=lambda: [smb_child.send(a.fileno(), m) for m in sent])
    writer.start()
    assert [smb_child.recv(b.fileno(), 10) for _ in sent] == sent
    writer.join()
    with pytest.raises(TimeoutError):
        smb_child.recv(b.fileno(), 0.2)
    a.sendall(smb_child.frame(("ok", None))[:3])  # a message cut short, then the other end goes away
    a.close()
    with pytest.raises(EOFError):
        smb_child.recv(b.fileno())


def test_exit_reasons_name_the_signal():
    assert _exit_reason(-signal.SIGSEGV) == "signal SIGSEGV"
    assert _exit_reason(1) == "exit code 1"


def test_on_windows_smb_is_refused_with_the_unc_alternative(monkeypatch):
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(ConfigError, match="Windows") as info:
        SmbSource(CONNECTION)
    assert "UNC path" in info.value.hint


def test_a_client_process_that_cannot_start_is_an_internal_error(monkeypatch):
    from orthanc_nas.errors import Internal
    from orthanc_nas.sources import smb

    monkeypatch.setattr(smb, "CHILD", "/nonexistent/smb_child.py")  # the interpreter exits with an error
    with pytest.raises(Internal, match="could not start") as info:
        SmbSource(CONNECTION).check_root()
    assert "Orthanc's log" in info.value.hint
