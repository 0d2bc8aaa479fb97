"""The Docker try-out in docker/, checked without a Docker engine (none runs where the tests do).

What can be checked here is: the compose file parses and names files that exist, every COPY of the
Dockerfiles finds its source in the build context, the script the image runs is where the image puts
the plugin, and the plugin accepts the `Nas` configuration the image ends up with (docker/orthanc.json
merged with compose's ORTHANC__* variables, the way the orthancteam/orthanc image merges them).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
from tests.support.readme import readme_json_with

from orthanc_nas.config import parse_settings

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with VAR unset: the default."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML (Debian: python3-yaml) reads compose.yaml")
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def build_of(service: dict) -> tuple[Path, Path]:
    """(context, Dockerfile) of a compose service's `build`."""
    build = service["build"]
    if isinstance(build, str):
        build = {"context": build}
    context = (DOCKER / build["context"]).resolve()
    return context, context / build.get("dockerfile", "Dockerfile")


def instructions(dockerfile: Path, name: str) -> list[list[str]]:
    """The arguments of each `name` instruction (lines joined where they end with a backslash)."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        words = line.split()
        if words and words[0].upper() == name:
            found.append([w for w in words[1:] if not w.startswith("--")])
    return found


def image_configuration(compose: dict) -> dict:
    """docker/orthanc.json with compose's ORTHANC__A__B_C variables merged in as {"A": {"BC": …}}."""
    config = json.loads((DOCKER / "orthanc.json").read_text())
    for key, raw in compose["services"]["orthanc"].get("environment", {}).items():
        if not key.startswith("ORTHANC__"):
            continue
        path = ["".join(word.capitalize() for word in token.split("_")) for token in key[9:].split("__")]
        value = interpolate(str(raw))
        try:
            value = json.loads(value)  # the image reads numbers, booleans and JSON as such
        except ValueError:
            pass
        node = config
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return config


def test_compose_has_orthanc_and_the_nas_with_their_ports(compose):
    services = compose["services"]
    assert {"orthanc", "nas"} <= set(services)
    ports = {str(p).split(":")[-1] for p in services["orthanc"]["ports"]}
    assert {"8042", "8043"} <= ports
    for name in ("orthanc", "nas"):
        context, dockerfile = build_of(services[name])
        assert context.is_dir() and dockerfile.is_file(), name


def test_every_copy_source_exists_in_its_build_context(compose):
    for name, service in compose["services"].items():
        context, dockerfile = build_of(service)
        copies = instructions(dockerfile, "COPY")
        assert copies, f"{dockerfile} copies nothing"
        for args in copies:
            for source in args[:-1]:
                assert (context / source).exists(), f"{name}: COPY {source} is not in {context}"


def test_the_build_context_keeps_what_the_dockerfiles_copy(compose):
    context, dockerfile = build_of(compose["services"]["orthanc"])
    ignore = context / ".dockerignore"
    assert ignore.is_file(), "without .dockerignore the repository's venvs and var/ go to the builder"
    kept = {line[1:] for line in ignore.read_text().splitlines() if line.startswith("!")}
    for args in instructions(dockerfile, "COPY"):
        assert args[0] in kept, f"COPY {args[0]}: not kept by {ignore}"


def test_mounted_files_exist_and_the_nas_folder_is_the_sample_one(compose):
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = interpolate(volume).split(":")[0]
            if not source.startswith("."):
                continue  # a named volume
            path = (DOCKER / source).resolve()
            if path == REPO / "var" / "sample-nas":
                continue  # made by `make sample`
            assert path.exists(), volume


def test_the_image_runs_the_plugin_where_it_copies_it():
    dockerfile = DOCKER / "Dockerfile"
    env = {}
    for args in instructions(dockerfile, "ENV"):
        for arg in args:
            key, _, value = arg.partition("=")
            env[key] = value
    script = Path(env["ORTHANC__PYTHON_SCRIPT"])
    copied = {Path(args[-1]): REPO / args[0] for args in instructions(dockerfile, "COPY")}
    assert script.name == "nas_plugin.py"
    assert copied[script.parent] == REPO / "plugin"
    assert copied[Path("/etc/orthanc/nas.json")] == DOCKER / "orthanc.json"


def test_the_plugin_accepts_the_configuration_the_image_gets(compose):
    config = image_configuration(compose)
    settings = parse_settings(config["Nas"], config)
    conn = settings.Connection
    assert conn.Type == "smb" and conn.Host == "nas" and conn.Share == "dicom" and conn.Password
    assert conn.Username == compose["services"]["nas"]["environment"]["NAS_USER"]
    published = {str(p).split(":")[-1] for p in compose["services"]["orthanc"]["ports"]}
    assert str(settings.ShareServer.Port) in published and settings.ShareServer.Host == "0.0.0.0"
    assert settings.DataDirectory.startswith("/var/lib/orthanc/db/")  # in the persisted volume


def test_the_samba_share_is_the_mounted_folder(compose):
    mounts = [interpolate(v).split(":")[1] for v in compose["services"]["nas"]["volumes"]]
    assert "/srv/dicom" in mounts
    testparm = shutil.which("testparm")
    if testparm is None:
        pytest.skip("testparm (Debian: samba-common-bin) checks smb.conf")
    result = subprocess.run([testparm, "-s", "--section-name", "dicom", "--parameter-name", "path",
                             str(DOCKER / "samba" / "smb.conf")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "/srv/dicom"


# What the orthancteam/orthanc image sets before the files and variables above are merged in (its
# docker/orthanc/orthanc-defaults.json; 26.8.1): remote access and authentication, both on.
IMAGE_DEFAULTS = {"RemoteAccessAllowed": True, "AuthenticationEnabled": True}


def test_the_image_has_a_registered_user_orthanc_1_13_refuses_to_start_without(compose):
    config = {**IMAGE_DEFAULTS, **image_configuration(compose)}
    assert config["RemoteAccessAllowed"] and config["AuthenticationEnabled"]
    users = config.get("RegisteredUsers")
    assert isinstance(users, dict) and users and all(isinstance(p, str) and p for p in users.values())


def test_the_orthanc_explorer_2_button_is_the_readmes_and_leads_from_its_pages_to_the_panel():
    readme = readme_json_with("CustomButtons")["OrthancExplorer2"]["UiOptions"]["CustomButtons"]
    image = json.loads((DOCKER / "orthanc.json").read_text())["OrthancExplorer2"]["UiOptions"]["CustomButtons"]
    assert image == readme
    (button,) = readme["study"]
    assert button["HttpMethod"] == "GET" and "{PatientID}" in button["Url"]
    # Orthanc Explorer 2 (Root "/ui/") shows a study under /ui/app/ and follows the link from there
    for page in ("http://orthanc:8042/ui/app/", "http://orthanc:8042/ui/app/filtered-studies"):
        target = urlsplit(urljoin(page, button["Url"].replace("{PatientID}", "DE-1001")))
        assert (target.path, target.query) == ("/nas/app/index.html", "q=DE-1001")
