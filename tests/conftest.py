"""Shared test configuration: the core is imported from plugin/ (see pyproject's pythonpath)."""

import warnings

# pydicom warns about each odd test file it is fed on purpose
warnings.filterwarnings("ignore", module="pydicom")
