"""A user's --configfile replaces the demo config instead of being merged over it."""

from __future__ import annotations

import shutil

import pytest
import yaml
from test_workflow import REPO, TINY, planned_jobs, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture
def workdir(tmp_path):
    """A working directory like the repository root: config/config.yaml is the demo."""
    shutil.copytree(REPO / "config", tmp_path / "config")
    return tmp_path


def test_a_config_without_run_runs_the_users_experiments(workdir):
    config = yaml.safe_load(TINY.read_text())
    del config["run"]
    (workdir / "mine.yaml").write_text(yaml.safe_dump(config))
    output = snakemake(workdir, "-n", "--configfile", "mine.yaml").stdout
    assert "tiny_binary" in output and "demo_" not in output
    assert planned_jobs(workdir, "--configfile", "mine.yaml")["train"] == 4 + 2


def test_errors_name_only_the_users_datasets(workdir):
    config = yaml.safe_load(TINY.read_text())
    config["experiments"]["tiny_binary"]["dataset"] = "nope"
    (workdir / "mine.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(workdir, "-n", "--configfile", "mine.yaml", check=False)
    assert result.returncode != 0
    assert "unknown dataset 'nope' (datasets: ['tiny'])" in result.stdout + result.stderr


def test_a_key_given_twice_stops_the_run_naming_the_file(workdir):
    (workdir / "mine.yaml").write_text(TINY.read_text() + "results: elsewhere\nresults: out\n")
    result = snakemake(workdir, "-n", "--configfile", "mine.yaml", check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "mine.yaml, line" in output
    assert "key 'results' is given twice" in output


def test_without_a_configfile_the_demo_runs(workdir):
    assert planned_jobs(workdir)["train"] == 3 * 3 + 3 * 2
