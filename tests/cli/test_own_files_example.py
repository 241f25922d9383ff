"""The README's own-files walk-through (docs/examples/own_files.sh) runs as written, on a
tiny scale: export, pretrain on one file, adapt and scratch on another, evaluate, compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ("--set model.hidden_size=16 --set model.intermediate_size=32 --set model.num_layers=1 "
        "--set train.progress=false")


@pytest.mark.slow
def test_own_files_walk_through_runs(tmp_path):
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "SCALE": "0.08", "EPOCHS": "2", "REGIONTUNE_OPTS": TINY,
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(ROOT / "docs" / "examples" / "own_files.sh"),
                             str(tmp_path / "work")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "work" / "compare.json").read_text())
    assert report["region"] == "harbor" and report["test_users"] > 0
    assert [row["kind"] for row in report["rows"]][:3] == ["backbone", "adapter", "model"]
    assert "harbor" in result.stdout and "Traceback" not in result.stderr
    assert not any(line.startswith("error:") for line in result.stderr.splitlines())
