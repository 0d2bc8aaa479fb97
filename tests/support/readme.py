"""The configuration README.md tells people to paste, for the tests that check it works as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_json_with(key: str) -> dict:
    """The one ```json block of the README that holds `key` (as `"key"`), parsed."""
    blocks = re.findall(r"```json\n(.*?)```", README.read_text(), re.S)
    found = [json.loads(block) for block in blocks if f'"{key}"' in block]
    if len(found) != 1:
        raise AssertionError(f"README.md has {len(found)} JSON blocks with {key!r}, not one")
    return found[0]
