"""Golden files for the text output of the seed cases, explained offline from the
committed snapshots of the lab's nodes (tests/explain/fixtures; test_seed.py
checks they still equal what the lab produces).

After an intended change of the output: UPDATE_GOLDEN=1 pytest tests/explain/test_golden.py
"""

import os
from pathlib import Path

import pytest

from tests.helpers.cli import why_route_in_process

HERE = Path(__file__).parent
CASES = ["slow-route", "ultimate-route", "ultimate-nosnat-route", "blog-as-written-route", "faster-archlinux"]


@pytest.mark.parametrize("case", CASES)
def test_text_output_matches_golden_file(case, capsys, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    status, out, err = why_route_in_process(capsys, "192.168.1.169", "8.8.8.8",
                                            "--snapshot", str(HERE / "fixtures" / f"{case}.json"))
    assert status == 0, err
    golden = HERE / "golden" / f"{case}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(out)
    assert out == golden.read_text()
    assert "\033[" not in out
