"""`SmbSource.list_root` of a folder below the root, against a real smbd: what a cluster run splits the NAS
with (`cluster_indexing._split`). Each answer is compared with `LocalSource.list_root` of the folder smbd
serves, so both sources keep one contract (`sources/base.py`)."""

from __future__ import annotations

import os
import shutil

import pytest
from tests.support.smbd import SambaServer, make_share_dir

from orthanc_nas.errors import NasNotFound, NasPermissionError
from orthanc_nas.sources.local import LocalSource
from orthanc_nas.sources.smb import SmbSource

pytestmark = pytest.mark.integration

TOP = "top 1"
FOLDERS = ["sub one", "Ünïcode 检查", "100% done", "a%20b", ".hidden", "zz denied", "ünïcode lower"]
FILES = ["a.dcm", "b 50%.txt", "ß.dcm"]


@pytest.fixture(scope="module")
def share():
    root = make_share_dir("nas-list-root-")
    for name in FOLDERS:
        os.makedirs(os.path.join(root, TOP, name, "deeper"))
        with open(os.path.join(root, TOP, name, "inner.dcm"), "wb") as fh:
            fh.write(b"x")
    for name in FILES:
        with open(os.path.join(root, TOP, name), "wb") as fh:
            fh.write(b"x")
    for folder, _dirs, files in os.walk(root):  # smbd reads as nasuser
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    os.chmod(os.path.join(root, TOP, "zz denied"), 0)  # nasuser may not list it (root, running the test, may)
    server = SambaServer(root).start()
    yield root, server
    server.cleanup()
    os.chmod(os.path.join(root, TOP, "zz denied"), 0o755)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def smb(share):
    source = SmbSource(share[1].connection())
    yield source
    source.close()


def test_a_folder_lists_its_names_folders_marked_as_the_local_source_does(share, smb):
    root, _ = share
    names = smb.list_root(100, TOP)
    assert names == sorted([f"{n}/" for n in FOLDERS] + FILES)  # names, not paths; hidden and denied ones too
    assert names == LocalSource(root).list_root(100, TOP)
    for name in FOLDERS[:5]:  # a name with a space, non-ASCII letters, `%` (also one that reads as an escape)
        assert smb.list_root(100, f"{TOP}/{name}") == ["deeper/", "inner.dcm"], name
    assert smb.list_root(100, f"{TOP}/Ünïcode 检查/deeper") == []


def test_folders_are_below_the_connection_s_path(share, smb):
    below = SmbSource(share[1].connection(Path=f"/{TOP}/"))
    try:
        assert below.list_root(100, "Ünïcode 检查") == smb.list_root(100, f"{TOP}/Ünïcode 检查")
        assert below.list_root(100, "") == smb.list_root(100, TOP)
    finally:
        below.close()


def test_limit_keeps_the_first_names_in_order(smb):
    every = smb.list_root(100, TOP)
    assert smb.list_root(3, TOP) == every[:3]
    assert smb.list_root(1, TOP) == every[:1]
    assert smb.list_root(0, TOP) == []


def test_a_missing_folder_or_a_file_is_not_found_as_on_a_local_folder(share, smb):
    root, _ = share
    local = LocalSource(root)
    for folder in (f"{TOP}/no such folder", f"{TOP}/a.dcm", f"{TOP}/sub one/inner.dcm"):
        with pytest.raises(NasNotFound) as here:
            local.list_root(100, folder)
        with pytest.raises(NasNotFound) as info:
            smb.list_root(100, folder)
        assert (info.value.kind, info.value.status) == (here.value.kind, here.value.status), folder
        assert folder in info.value.message and info.value.hint, folder
    with pytest.raises(NasNotFound, match="is not a folder"):
        smb.list_root(100, f"{TOP}/a.dcm")


def test_a_denied_folder_is_a_permission_error_and_the_connection_goes_on(smb):
    with pytest.raises(NasPermissionError) as info:
        smb.list_root(100, f"{TOP}/zz denied")
    assert info.value.kind == "permission" and "zz denied" in info.value.message and "nasuser" in info.value.hint
    assert smb.list_root(100, f"{TOP}/.hidden") == ["deeper/", "inner.dcm"]  # listed like any other
