"""Shared by every test package: lab_helpers (the lab's test helpers) is importable everywhere."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "lab"))
