"""A real Orthanc with the plugin, started on free ports in a folder of its own.

Used by the integration and e2e tests and by the benchmarks. Importable
without pytest. `OrthancServer(workdir, nas={...})` writes an orthanc.json,
starts `Orthanc` and polls `GET /system` until it answers.

`ORTHANC_TARGET` chooses the Orthanc: `1.10` (default) is the host's, from
Debian 12 packages; `1.12` is Debian 13's and `1.13` Debian unstable's, run by
`tools/debian-tree.sh` inside the tree that `make orthanc-1.12` / `make
orthanc-1.13` makes (`var/debian13` or `ORTHANC_DEBIAN13`, `var/debian-sid` or
`ORTHANC_DEBIAN_SID`), with the repository, the temporary folder and the
server's folders mounted at the same paths, so tests see no difference.
`installed_versions()` reads the versions the target really holds (unstable
moves): the integration tier names them in its report.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from tests.support.ports import free_port  # noqa: F401 (the tests import it from here too)

REPO = Path(__file__).resolve().parents[2]
PLUGIN_SCRIPT = REPO / "plugin" / "nas_plugin.py"
TARGETS = ("1.10", "1.12", "1.13")
TARGET = os.environ.get("ORTHANC_TARGET") or "1.10"
if TARGET not in TARGETS:
    raise ValueError(f"ORTHANC_TARGET must be one of {', '.join(TARGETS)}, not {TARGET!r}")
# The Debian tree each newer target runs from; None for the host's Orthanc.
TREES = {
    "1.12": Path(os.environ.get("ORTHANC_DEBIAN13") or REPO / "var" / "debian13").resolve(),
    "1.13": Path(os.environ.get("ORTHANC_DEBIAN_SID") or REPO / "var" / "debian-sid").resolve(),
}
TREE = TREES.get(TARGET)
TREE_RUN = REPO / "tools" / "debian-tree.sh"
# Inside a Debian tree, Orthanc and its plugin sit where Debian puts them.
ORTHANC_BINARY = os.environ.get("ORTHANC_BINARY", "/usr/sbin/Orthanc") if TREE is None else "/usr/sbin/Orthanc"
PYTHON_PLUGIN = os.environ.get("ORTHANC_PYTHON_PLUGIN", "/usr/share/orthanc/plugins/libOrthancPython.so")
USER, PASSWORD = "nasadmin", "nas-test-password"


def installed_versions() -> dict[str, str]:
    """{"Orthanc": "1.13.0+dfsg-1+b1", "Python plugin": "7.1+ds-1+b2", "Python": "3.14.10"}: the Debian
    packages' versions and the Python's of the target (the host's, or its tree's)."""
    root = [] if TREE is None else ["chroot", str(TREE)]
    packages = subprocess.run([*root, "dpkg-query", "-W", "-f", "${Package} ${Version}\n", "orthanc",
                               "orthanc-python"], capture_output=True, text=True).stdout.split()
    versions = dict(zip(packages[::2], packages[1::2], strict=True))
    python = subprocess.run([*root, "/usr/bin/python3", "-c", "import platform; print(platform.python_version())"],
                            capture_output=True, text=True).stdout.strip()
    return {"Orthanc": versions.get("orthanc", "?"), "Python plugin": versions.get("orthanc-python", "?"),
            "Python": python or "?"}


class OrthancServer:
    """One Orthanc process. `nas` is the `Nas` section; `extra` more top-level settings."""

    def __init__(self, workdir: Path | str, nas: dict | None = None, *, auth: bool = False,
                 extra: dict | None = None, port: int | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.nas = nas if nas is not None else {}
        self.auth = auth
        self.extra = extra or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "orthanc.log"
        self.config_path = self.workdir / "orthanc.json"
        self.session = requests.Session()
        if auth:
            self.session.auth = (USER, PASSWORD)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict:
        cfg = {
            "Name": "orthanc-nas-test",
            "HttpPort": self.port,
            "DicomPort": free_port(),
            "DicomServerEnabled": False,  # not needed here; saves a second at every stop
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "storage"),
            "Plugins": [PYTHON_PLUGIN],
            "PythonScript": str(PLUGIN_SCRIPT),
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.auth,
            "RegisteredUsers": {USER: PASSWORD} if self.auth else {},
            "Nas": self.nas_section(),
        }
        cfg.update(self.extra)
        return cfg

    def nas_section(self):
        """`nas` as given; settings from the web may use the temporary folder where tests keep their NAS
        folders, unless the test sets AllowedRoots itself (the default allows only /mnt, /media, /srv)."""
        if isinstance(self.nas, dict) and "AllowedRoots" not in self.nas:
            return {**self.nas, "AllowedRoots": [tempfile.gettempdir()]}
        return self.nas

    def write_config(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=2))

    def command(self) -> list[str]:
        """The command line that starts this Orthanc (the same PID as Orthanc's, for signals)."""
        orthanc = [ORTHANC_BINARY, "--verbose", str(self.config_path)]
        if TREE is None:
            return orthanc
        # The repository and the temporary folder are always mounted; the script skips folders inside
        # those. A NAS folder elsewhere must exist when Orthanc starts to be seen.
        folders = [self.workdir]
        conn = self.nas.get("Connection") if isinstance(self.nas, dict) else None
        path = conn.get("Path") if isinstance(conn, dict) else None
        if isinstance(path, str) and os.path.isabs(path) and os.path.isdir(path):
            folders.append(Path(path))
        binds = [arg for folder in folders for arg in ("--bind", str(folder))]
        return [str(TREE_RUN), "run", str(TREE), *binds, "--cd", str(self.workdir), "--", *orthanc]

    def start(self, timeout: float = 30, expect_failure: bool = False) -> OrthancServer:
        self.write_config()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=self.workdir,
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if expect_failure:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired as exc:
                raise AssertionError("Orthanc kept running although it was expected to stop") from exc
            return self
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc stopped while starting:\n{self.log()[-4000:]}")
            try:
                if self.session.get(f"{self.url}/system", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer within {timeout}s:\n{self.log()[-4000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 30) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError("Orthanc did not stop within its time after SIGTERM") from None

    def kill9(self) -> None:
        """Kill Orthanc and everything it started (the parse processes) without warning."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    # -- REST ---------------------------------------------------------------------
    def get(self, path: str, **kw) -> requests.Response:
        return self.session.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.session.post(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def put(self, path: str, **kw) -> requests.Response:
        return self.session.put(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def delete(self, path: str, **kw) -> requests.Response:
        return self.session.delete(self.url + path, timeout=kw.pop("timeout", 30), **kw)

    def wait_index(self, timeout: float = 300, *, phases=("done", "failed", "cancelled")) -> dict:
        """Poll GET /nas/status until the run ends; returns the final status."""
        deadline = time.monotonic() + timeout
        status = {}
        while time.monotonic() < deadline:
            status = self.get("/nas/status").json()
            if not status["running"] and status["phase"] in phases:
                return status
            time.sleep(0.1)
        raise AssertionError(f"indexing did not finish within {timeout}s: {status}")

    def index(self, full: bool = False, timeout: float = 300) -> dict:
        answer = self.post("/nas/index", json={"full": full})
        assert answer.status_code == 202, answer.text
        return self.wait_index(timeout)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
