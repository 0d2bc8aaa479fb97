"""The script Orthanc's "PythonScript" points at: makes the dependencies importable, then registers the plugin.

A site that already has a Python script loads the plugin from it with:

    import runpy; runpy.run_path("/path/to/orthanc-nas/plugin/nas_plugin.py")
"""

import glob
import os
import sys

_here = os.path.dirname(os.path.abspath(__file__))
# `.venv` holds the dependencies for the host's Python (`make deps`), `.venv-3.13` those for the Python
# 3.13 of Orthanc 1.12 in the Debian 13 tree (`make orthanc-1.12`): each Python takes its own version's.
_venv = glob.glob(os.path.join(_here, os.pardir, ".venv*", "lib",
                               f"python{sys.version_info.major}.{sys.version_info.minor}", "site-packages"))
for _path in [_here, *_venv]:
    if _path not in sys.path:
        sys.path.insert(1, os.path.abspath(_path))

import orthanc  # noqa: E402  (provided by Orthanc's Python plugin)

import nas_glue  # noqa: E402

nas_glue.register(orthanc)
