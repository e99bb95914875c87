"""A `compare` entry in the config plans one `compare` job after the two evaluations (and one
`ensemble` job with `ensemble: true`); merged classes plan one `evaluate_merged` job."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "integration" / "configs" / "tiny_demo.yaml"
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

pytestmark = pytest.mark.slow


def test_compare_entry_plans_one_compare_job(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["experiments"]["tiny_binary_b"] = copy.deepcopy(config["experiments"]["tiny_binary"])
    config["experiments"]["tiny_binary_b"]["model"] = {"name": "resnet18"}
    config["run"] = ["tiny_binary", "tiny_binary_b", "tiny_multiclass"]
    config["compare"] = [
        {
            "name": "cnn_vs_resnet",
            "experiments": ["tiny_binary", "tiny_binary_b"],
            "ensemble": True,
        }
    ]
    config["experiments"]["tiny_multiclass"]["evaluate"] = {
        "merged": {"blast_or_monocyte": ["blast", "monocyte"]}
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n"]
    command += ["--quiet", "rules", "--configfile", str(path)]
    result = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = {
        parts[0]: int(parts[1])
        for parts in map(str.split, result.stdout.splitlines())
        if len(parts) == 2 and parts[1].isdigit()
    }
    assert counts["compare"] == 1
    assert counts["ensemble"] == 1
    assert counts["evaluate_binary"] == 2
    assert counts["evaluate_merged"] == 1
