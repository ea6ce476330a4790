"""Shared by every test package: the helper modules of tests/lab and tests/explain import everywhere."""

import sys
from pathlib import Path

for folder in ("lab", "explain"):
    sys.path.insert(0, str(Path(__file__).parent / folder))
