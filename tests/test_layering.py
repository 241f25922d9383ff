"""The package's structure: layering contracts (import-linter), the package list, and the rule
that core code asks the adapter registry instead of comparing method names."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from regiontune.adapters import METHODS

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIR = PYPROJECT["tool"]["setuptools"]["package-dir"]


def _packages_on_disk() -> set[str]:
    """Every folder with an ``__init__.py`` under a mapped source root, as a dotted name."""
    found = set()
    for package, folder in PACKAGE_DIR.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((package, *rel)))
    return found


def test_every_package_folder_is_installed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    assert _packages_on_disk() == listed


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    """The tree as the wheel installs it (core/ -> regiontune/, adapters/ inside it), plus the
    benchmarks: static tools can follow every import there."""
    out = tmp_path_factory.mktemp("staged")
    for package, folder in sorted(PACKAGE_DIR.items()):  # parents before children
        target = out.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for src in (ROOT / folder).rglob("*.py"):
            rel = src.relative_to(ROOT / folder)
            dest = target / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                shutil.copy2(src, dest)
    shutil.copytree(ROOT / "benchmarks", out / "benchmarks",
                    ignore=shutil.ignore_patterns("results", "*.json", "*.md", "*.png"))
    return out


def test_import_contracts_hold(staged):
    linter = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert linter, "import-linter is not installed (pip install -e .[dev])"
    env = {**os.environ, "PYTHONPATH": str(staged)}
    result = subprocess.run([linter, "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
                            cwd=staged, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken" in result.stdout, result.stdout


def _method_name_comparisons(path: Path) -> list[str]:
    """``x == "lora"``-style comparisons (==, !=, in, not in) with a registered method name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            values = ([side] if isinstance(side, ast.Constant)
                      else list(side.elts) if isinstance(side, (ast.Tuple, ast.List, ast.Set))
                      else [])
            if any(isinstance(v, ast.Constant) and v.value in METHODS for v in values):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_core_asks_the_registry_instead_of_comparing_method_names():
    files = [p for p in (ROOT / "core").rglob("*.py") if "cli" not in p.relative_to(ROOT).parts]
    assert files
    offenders = [hit for p in files for hit in _method_name_comparisons(p)]
    assert offenders == []


def test_the_comparison_check_finds_a_comparison(tmp_path):
    sample = ROOT / "tests" / "_sample_compare.py"
    try:
        sample.write_text('def f(m):\n    return m in ("lora", "x") or m == "full"\n')
        assert len(_method_name_comparisons(sample)) == 2
    finally:
        sample.unlink()
