import json
import os
import stat

import pytest

from orthanc_nas.config import Connection, load_saved_connection, parse_settings, save_connection
from orthanc_nas.errors import ConfigError


def test_defaults_follow_orthanc():
    s = parse_settings({"Connection": {"Type": "local", "Path": "/mnt/nas"}}, {"StorageDirectory": "/srv/o"})
    assert s.DataDirectory == "/srv/o/nas"
    assert 8 <= s.Workers <= 16
    assert s.ShareServer.Host == "127.0.0.1"
    assert parse_settings({}, {"RemoteAccessAllowed": True}).ShareServer.Host == "0.0.0.0"
    assert s.DefaultShareHours == 24 and s.MaxShareHours == 720


@pytest.mark.parametrize("section, named", [
    ({"Workerz": 3}, "Nas.Workerz"),
    ({"Workers": "8"}, "Nas.Workers"),
    ({"Workers": True}, "Nas.Workers"),
    ({"Workers": 0}, "Nas.Workers"),
    ({"Connection": {"Type": "local", "Path": "/x", "Prot": 1}}, "Nas.Connection.Prot"),
    ({"Connection": {"Type": "nfs", "Path": "/x"}}, "Nas.Connection.Type"),
    ({"Connection": {"Type": "smb", "Host": "nas", "Share": "d", "Username": "u"}}, "Nas.Connection.Password"),
    ({"Connection": {"Type": "local"}}, "Nas.Connection.Path"),
    ({"Enumerator": "dir"}, "Nas.Enumerator"),
    ({"ShareServer": {"Port": "8043"}}, "Nas.ShareServer.Port"),
    ({"ShareServer": {"TrustedProxy": ["127.0.0.1"]}}, "Nas.ShareServer.TrustedProxy"),
    ({"DefaultShareHours": 1000}, "Nas.DefaultShareHours"),
    ("yes", "Nas"),
])
def test_bad_settings_name_the_key(section, named):
    with pytest.raises(ConfigError) as err:
        parse_settings(section)
    assert named in err.value.message


def test_public_settings_hide_the_password():
    s = parse_settings({"Connection": {"Type": "smb", "Host": "h", "Share": "s", "Username": "u",
                                       "Password": "pw"}})
    public = s.public()
    assert "Password" not in public["Connection"] and public["Connection"]["PasswordSet"] is True
    assert "pw" not in json.dumps(public) and "pw" not in repr(s)


def test_saved_connection_overrides_and_is_private(tmp_path):
    s = parse_settings({"Connection": {"Type": "local", "Path": "/a"}, "DataDirectory": str(tmp_path)})
    save_connection(s.with_connection(Connection(Type="local", Path="/b"), workers=5))
    mode = stat.S_IMODE(os.stat(tmp_path / "nas-config.json").st_mode)
    assert mode == 0o600
    loaded = load_saved_connection(s)
    assert loaded.Connection.Path == "/b" and loaded.Workers == 5


def test_broken_saved_connection_is_a_config_error(tmp_path):
    (tmp_path / "nas-config.json").write_text('{"Connection": {"Type": "local", "Path": 3}}')
    s = parse_settings({"DataDirectory": str(tmp_path)})
    with pytest.raises(ConfigError, match="nas-config.json.Connection.Path"):
        load_saved_connection(s)


def test_database_is_sqlite_by_default_or_a_postgresql_url():
    assert parse_settings({}).Database.Type == "sqlite"
    settings = parse_settings({"Database": {"Type": "postgresql", "Url": "postgresql://orthanc@db:5432/nas",
                                            "Password": "secret"}})
    assert (settings.Database.Type, settings.Database.Url) == ("postgresql", "postgresql://orthanc@db:5432/nas")
    assert "secret" not in json.dumps(settings.public()) and settings.public()["Database"]["PasswordSet"] is True


@pytest.mark.parametrize("database, named", [
    ({"Type": "mysql"}, "Nas.Database.Type"),
    ({"Type": "postgresql"}, "Nas.Database.Url"),
    ({"Type": "postgresql", "Url": "db:5432"}, "Nas.Database.Url"),
    ({"Host": "db"}, "Nas.Database.Host"),
])
def test_bad_database_settings_name_the_key(database, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        parse_settings({"Database": database})


def test_the_dicom_node_runs_on_either_engine():
    settings = parse_settings({"Database": {"Type": "postgresql", "Url": "postgresql://db/nas"},
                               "DicomServer": {"Enabled": True}})
    assert settings.DicomServer.Enabled and settings.Database.Type == "postgresql"


def test_the_readmes_two_node_configuration_is_valid():
    from tests.support.readme import readme_json_with

    settings = parse_settings(readme_json_with("PostgreSQL")["Nas"])
    assert settings.Database.Type == "postgresql" and settings.Database.Url.startswith("postgresql://")
