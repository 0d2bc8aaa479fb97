"""Shared test configuration: the core is imported from plugin/ (see pyproject's pythonpath).

Hypothesis profiles (`HYPOTHESIS_PROFILE=NAME`, else `ci` when `CI` is set, else `dev`):
- `dev`: random examples each run, found failures kept in `.hypothesis/` and replayed first;
- `ci`: the same examples on every run (derandomized, no example database), so a run is repeatable;
- `fuzz`: ten times the examples, to hunt for new disagreements by hand.
The cases found so far are replayed in every profile by the tests' `@example`s.
"""

import os
import warnings

from hypothesis import settings

# pydicom warns about each odd test file it is fed on purpose
warnings.filterwarnings("ignore", module="pydicom")

settings.register_profile("dev", max_examples=300)
settings.register_profile("ci", max_examples=300, derandomize=True, database=None, print_blob=True)
settings.register_profile("fuzz", max_examples=3000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))
