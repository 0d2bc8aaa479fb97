"""The settings routes with an SMB connection: a real Orthanc, a real smbd on loopback.

The connection test tells a wrong password (auth), a missing share or folder (not_found), a
folder Samba refuses (permission) and a NAS that does not answer (network) apart, each with
a hint; the saved password is never answered nor logged, is kept for the same server and
account, survives a restart, and a new one takes effect at once (old sessions dropped).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import time

import pytest
from tests.support.dicom import write_series
from tests.support.orthanc import OrthancServer
from tests.support.smbd import SambaServer, SilentListener, make_share_dir

pytestmark = pytest.mark.integration

WRONG = "not-the-password"
UNREACHABLE_WITHIN = 30  # seconds: the spec's limit for giving up on a NAS that does not answer


@pytest.fixture(scope="module")
def samba():
    """A Samba server of this module: two series, and a folder Samba refuses to list."""
    share = make_share_dir("nas-config-share-")
    write_series(os.path.join(share, "doe", "ct"), 3, PatientName="DOE^JOHN", PatientID="S1")
    write_series(os.path.join(share, "muller"), 2, PatientName="Müller^Jürgen", PatientID="S2",
                 charset="ISO_IR 100")
    locked = os.path.join(share, "locked")
    os.makedirs(locked)
    os.chmod(locked, 0)  # Samba enforces file permissions for the SMB user, even for root's tests
    server = SambaServer(share).start()
    yield server
    server.cleanup()
    os.chmod(locked, 0o755)
    shutil.rmtree(share, ignore_errors=True)


def smb(samba: SambaServer, **overrides) -> dict:
    conn = {"Type": "smb", "Host": samba.host, "Port": samba.port, "Share": samba.share,
            "Username": samba.user, "Password": samba.password}
    conn.update(overrides)
    return {k: v for k, v in conn.items() if v is not None}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """An Orthanc with no connection yet, for the connection tests (which save nothing)."""
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-smb-test"), nas={})
    server.start()
    yield server
    server.stop()


def probe(orthanc: OrthancServer, connection: dict) -> tuple[int, dict]:
    answer = orthanc.post("/nas/config/test", json={"Connection": connection}, timeout=60)
    return answer.status_code, answer.json()


# -- the connection test: each failure has its kind and a hint ----------------------------------------------
def test_the_right_password_lists_the_share(orthanc, samba):
    status, result = probe(orthanc, smb(samba))
    assert status == 200 and result["ok"] is True
    assert result["entries"] == ["doe/", "locked/", "muller/"]


def test_a_wrong_password_is_auth_with_the_mount_command(orthanc, samba):
    status, result = probe(orthanc, smb(samba, Password=WRONG))
    assert status == 502 and result["ok"] is False and result["kind"] == "auth"
    assert "mount -t cifs" in result["hint"] and WRONG not in json.dumps(result)
    assert WRONG not in orthanc.log()


@pytest.mark.parametrize("overrides, words", [({"Share": "nope"}, "nope"), ({"Path": "not/there"}, "not/there")])
def test_a_missing_share_or_folder_is_not_found(orthanc, samba, overrides, words):
    status, result = probe(orthanc, smb(samba, **overrides))
    assert status == 502 and result["kind"] == "not_found" and words in result["error"] and result["hint"]


def test_a_folder_samba_refuses_is_permission(orthanc, samba):
    status, result = probe(orthanc, smb(samba, Path="locked"))
    assert status == 502 and result["kind"] == "permission" and result["hint"]


@pytest.mark.parametrize("drop_syn", [False, True], ids=["silent", "unreachable"])
def test_a_nas_that_does_not_answer_is_network_within_30_s(orthanc, samba, drop_syn):
    with SilentListener(drop_syn=drop_syn) as silent:
        started = time.monotonic()
        status, result = probe(orthanc, smb(samba, Port=silent.port))
        elapsed = time.monotonic() - started
    assert status == 502 and result["kind"] == "network" and "mount" in result["hint"]
    assert elapsed < UNREACHABLE_WITHIN, elapsed
    assert orthanc.get("/nas/status", timeout=5).status_code == 200


# -- saving an SMB connection ---------------------------------------------------------------------------
def test_the_saved_password_is_private_kept_and_survives_a_restart(orthanc_factory, samba, tmp_path):
    workdir = tmp_path / "orthanc"
    o = orthanc_factory({}, workdir=workdir)
    assert o.get("/nas/config").json()["Connection"]["PasswordSet"] is False

    answer = o.put("/nas/config", json={"Connection": smb(samba)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["test"]["ok"] is True and answer.json()["Connection"]["PasswordSet"] is True
    config_file = workdir / "storage" / "nas" / "nas-config.json"
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert json.loads(config_file.read_text())["Connection"]["Password"] == samba.password

    # the answer of GET goes back as it is: the password is kept
    settings = o.get("/nas/config").json()
    assert "Password" not in settings["Connection"]
    answer = o.put("/nas/config", json=settings)
    assert answer.status_code == 200 and answer.json()["test"]["ok"] is True
    # but it is not handed to another server
    moved = {**settings["Connection"], "Host": "localhost"}
    refused = o.put("/nas/config", json={"Connection": moved})
    assert refused.status_code == 400 and refused.json()["field"] == "Connection.Password"

    assert o.index()["phase"] == "done" and o.get("/nas/search", params={"q": "muller"}).json()

    o.stop()
    o.start()
    assert o.get("/nas/config").json()["Connection"]["PasswordSet"] is True
    assert o.post("/nas/config/test", json={}).json()["ok"] is True  # the saved password, after the restart

    everything = o.log() + "".join(p.read_text(errors="replace") for p in (workdir / "storage" / "nas").glob("*.json")
                                   if p.name != "nas-config.json")
    assert samba.password not in everything


def test_new_credentials_take_effect_at_once(orthanc_factory, samba):
    o = orthanc_factory({"Connection": smb(samba)})
    assert o.index()["phase"] == "done"  # sessions are open and were used

    answer = o.put("/nas/config", json={"Connection": smb(samba, Password=WRONG)})
    assert answer.status_code == 200 and answer.json()["test"]["kind"] == "auth"
    status = o.index()
    assert status["phase"] == "failed" and status["failure"]["kind"] == "auth"  # not the old session

    assert o.put("/nas/config", json={"Connection": smb(samba)}).json()["test"]["ok"] is True
    assert o.index()["phase"] == "done"
    assert WRONG not in o.log() and samba.password not in o.log()
