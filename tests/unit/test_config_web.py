"""Settings from the web: the PUT /nas/config body, the saved password, nas-config.json, the connection test."""

from __future__ import annotations

import json
import os
import stat
import threading
import time

import pytest
from tests.support.web_settings import BODY_RULES, CONNECTION_RULES, IDENTITY_CHANGES, SAVED

from orthanc_nas.config import Connection, parse_settings
from orthanc_nas.errors import ConfigError, NasAuthError
from orthanc_nas.probe import try_source
from orthanc_nas.web_config import (
    load_saved_connection,
    parse_web_connection,
    parse_web_settings,
    save_connection,
)

SMB = SAVED


@pytest.fixture
def current(tmp_path):
    return parse_settings({"Connection": SMB, "DataDirectory": str(tmp_path)})


def refused(body, current) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_web_settings(body, current)
    assert info.value.status == 400 and info.value.kind == "config"
    return info.value


@pytest.mark.parametrize("connection, field", CONNECTION_RULES)
def test_each_connection_rule_names_its_field(connection, field, current):
    err = refused({"Connection": connection}, current)
    assert err.field == field and field in err.message
    assert err.to_json()["field"] == field and err.hint


@pytest.mark.parametrize("body, field, words", BODY_RULES)
def test_each_body_rule_names_its_field(body, field, words, current):
    err = refused(body, current)
    assert err.field == field and words in err.message


def test_the_answer_of_get_can_be_sent_back_as_it_is(current):
    """GET's settings (PasswordSet, the read-only keys unchanged, no password) are a valid PUT body."""
    body = json.loads(json.dumps(current.public()))
    body["Workers"] = 5
    new = parse_web_settings(body, current)
    assert new.Connection == current.Connection and new.Workers == 5
    assert new.DataDirectory == current.DataDirectory and new.ShareServer == current.ShareServer


def test_a_missing_password_keeps_the_saved_one_for_the_same_server_and_account(current):
    without = {k: v for k, v in SMB.items() if k != "Password"}
    for password in ({}, {"Password": ""}):
        same = {**without, "Host": "NAS.example", "Username": "Reader", "Path": "ct", "Port": 445, **password}
        new = parse_web_connection(same, current.Connection)
        assert new.Password == "s3cret" and new.Path == "ct" and new.Port == 445
    typed = parse_web_connection({**SMB, "Password": "new one"}, current.Connection)
    assert typed.Password == "new one"


@pytest.mark.parametrize("change", IDENTITY_CHANGES)
def test_the_saved_password_never_goes_to_another_server_or_account(change, current):
    raw = {**{k: v for k, v in SMB.items() if k != "Password"}, **change}
    with pytest.raises(ConfigError) as info:
        parse_web_connection(raw, current.Connection)
    assert info.value.field == "Connection.Password" and "another" in info.value.message
    assert "s3cret" not in json.dumps(info.value.to_json())


def test_no_saved_password_means_the_password_is_required(tmp_path):
    local = parse_settings({"Connection": {"Type": "local", "Path": "/x"}, "DataDirectory": str(tmp_path)})
    raw = {k: v for k, v in SMB.items() if k != "Password"}
    with pytest.raises(ConfigError, match="Connection.Password is required for an SMB connection"):
        parse_web_connection(raw, local.Connection)


def test_saved_file_is_0600_even_over_a_stale_temporary_file(current, tmp_path):
    tmp = tmp_path / f"nas-config.json.tmp{os.getpid()}.{threading.get_ident()}"
    tmp.write_text("left by a crash")
    tmp.chmod(0o644)
    save_connection(current)
    saved = tmp_path / "nas-config.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["Connection"]["Password"] == "s3cret"
    assert not tmp.exists()


def test_workers_are_saved_only_when_asked(current, tmp_path):
    save_connection(current.with_connection(current.Connection, workers=3), include_workers=False)
    assert "Workers" not in json.loads((tmp_path / "nas-config.json").read_text())
    assert load_saved_connection(current).Workers == current.Workers


def test_describe_never_shows_the_password():
    conn = Connection(**SMB, Domain="HOSP", Path="/ct/")
    assert conn.describe() == "//nas.example:445/dicom/ct as HOSP\\reader"
    assert Connection(Type="local", Path="/mnt/nas").describe() == "folder /mnt/nas"


# -- the connection test ---------------------------------------------------------------------------------
class FakeSource:
    description = "fake"

    def __init__(self, result=None, error=None, delay=0.0):
        self.result, self.error, self.delay = result, error, delay
        self.closed = threading.Event()

    def list_root(self, limit=100):
        time.sleep(self.delay)
        if self.error:
            raise self.error
        return self.result[:limit]

    def close(self):
        self.closed.set()


def test_a_listing_is_answered_with_its_first_entries():
    source = FakeSource([f"f{i:03d}" for i in range(150)])
    result = try_source(source, close=True)
    assert result["ok"] is True and len(result["entries"]) == 100 and result["elapsed_ms"] >= 0
    assert source.closed.is_set()


def test_a_failure_is_answered_with_its_kind_error_and_hint():
    result = try_source(FakeSource(error=NasAuthError("logon refused", "Check the password.")))
    assert result == {"ok": False, "kind": "auth", "error": "logon refused", "hint": "Check the password.",
                      "elapsed_ms": result["elapsed_ms"]}


def test_a_hung_listing_is_a_network_error_within_the_time_limit():
    source = FakeSource([], delay=1)
    started = time.monotonic()
    result = try_source(source, timeout=0.3, close=True)
    assert time.monotonic() - started < 0.9
    assert result["ok"] is False and result["kind"] == "network" and "did not answer within 0.3 s" in result["error"]
    assert source.closed.wait(10)  # the stuck listing still closes its source when it ends


def test_a_bug_is_an_internal_error_and_logged(caplog):
    result = try_source(FakeSource(error=KeyError("oops")))
    assert result["ok"] is False and result["kind"] == "internal"
    assert "failed unexpectedly" in caplog.text
