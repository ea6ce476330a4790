"""The source tree's shape: the import layering (import-linter's contracts in pyproject.toml), no
import circles, and ruff's checks. Each test fails with the tool's own report.

Imports inside functions count everywhere: grimp, which both import-linter and the circle check
use, reads every import statement of a module, not only the top-level ones.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ROOT_PACKAGES = ("tracer", "rules")


def run_tool(name: str, *args: str) -> subprocess.CompletedProcess:
    """A test tool from this interpreter's venv (the `test` extras), run in the repository root."""
    tool = Path(sys.executable).with_name(name)
    if not tool.exists():
        pytest.fail(f"{tool} is missing: install the test tools with `pip install -e '.[test]'`")
    return subprocess.run([str(tool), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    result = run_tool("lint-imports", "--no-cache")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing():
    result = run_tool("ruff", "check", "--no-cache", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def import_circles(graph) -> list[list[str]]:
    """The graph's strongly connected components of more than one module (Tarjan), each sorted."""
    order: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(module: str) -> None:
        order[module] = lowest[module] = len(order)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in order:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in stack:
                lowest[module] = min(lowest[module], order[imported])
        if lowest[module] == order[module]:
            component = stack[stack.index(module):]
            del stack[stack.index(module):]
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in order:
            visit(module)
    return sorted(circles)


def test_no_import_circles():
    """The layers contract forbids circles between layers only: not inside one layer (lint.run ↔
    lint.replay), nor between a package and its own modules, nor across the two root packages."""
    graph = grimp.build_graph(*ROOT_PACKAGES, cache_dir=None)
    report = []
    for circle in import_circles(graph):
        report.append("circle: " + ", ".join(circle))
        members = set(circle)
        for importer in circle:
            for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
                lines = sorted(d["line_number"] for d in graph.get_import_details(importer=importer,
                                                                                   imported=imported))
                report.append(f"  {importer} (line {', '.join(map(str, lines))}) imports {imported}")
    assert not report, "\n".join(report)


PROBE_CONTRACT = """
[importlinter]
root_package = wrtreeprobe

[importlinter:contract:probe]
name = high above low
type = layers
layers =
    wrtreeprobe.high
    wrtreeprobe.low
"""


def test_imports_inside_functions_count(tmp_path, monkeypatch):
    """A package whose lower module imports the higher one only inside a function: both
    import-linter and the circle check see that import."""
    package = tmp_path / "wrtreeprobe"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "high.py").write_text("from wrtreeprobe import low\n")
    (package / "low.py").write_text("def later():\n    from wrtreeprobe import high\n\n    return high\n")
    (tmp_path / "probe.ini").write_text(PROBE_CONTRACT)
    tool = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(tool), "--no-cache", "--config", "probe.ini"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "wrtreeprobe.low -> wrtreeprobe.high (l.2)" in result.stdout

    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("wrtreeprobe", cache_dir=None)
    assert import_circles(graph) == [["wrtreeprobe.high", "wrtreeprobe.low"]]
