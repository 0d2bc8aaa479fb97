"""The command line's NAS address: a folder, or an SMB share with the password from the environment."""

from __future__ import annotations

import pytest

from orthanc_nas.cli import connection_section
from orthanc_nas.config import parse_connection
from orthanc_nas.errors import ConfigError


def test_a_folder_is_a_local_connection():
    assert connection_section("/mnt/nas/dicom") == {"Type": "local", "Path": "/mnt/nas/dicom"}


def test_an_smb_address_takes_its_password_from_the_environment(monkeypatch):
    monkeypatch.setenv("NAS_PASSWORD", "s3cret")
    section = connection_section("smb://HOSP;jdoe@nas.local:4450/dicom%20share/ct/2024")
    assert section == {"Type": "smb", "Host": "nas.local", "Port": 4450, "Share": "dicom share", "Path": "ct/2024",
                       "Username": "jdoe", "Domain": "HOSP", "Password": "s3cret"}
    parse_connection(section)  # a valid Connection
    assert connection_section("smb://jdoe@nas/dicom")["Path"] == ""


@pytest.mark.parametrize("address", ["smb://nas/dicom", "smb://jdoe@nas/", "smb:///dicom"])
def test_an_incomplete_smb_address_is_refused(monkeypatch, address):
    monkeypatch.setenv("NAS_PASSWORD", "s3cret")
    with pytest.raises(ConfigError):
        connection_section(address)


def test_no_password_in_the_environment_is_refused(monkeypatch):
    monkeypatch.delenv("NAS_PASSWORD", raising=False)
    with pytest.raises(ConfigError, match="NAS_PASSWORD"):
        connection_section("smb://jdoe@nas/dicom")
