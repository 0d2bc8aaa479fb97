"""Print the Python dependencies named in pyproject.toml, one a line, for `pip install -r`: `deps.py runtime test`."""

import sys
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
wanted = sys.argv[1:] or ["runtime"]
deps = list(project["dependencies"]) if "runtime" in wanted else []
for extra in wanted:
    deps += project.get("optional-dependencies", {}).get(extra, [])
print("\n".join(deps))
