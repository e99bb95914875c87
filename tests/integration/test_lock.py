"""The run lock in the results folder, as Snakemake takes and clears it."""

from __future__ import annotations

import json
import socket
import subprocess

import pytest
from test_workflow import TINY, snakemake

pytestmark = pytest.mark.slow

FETCH = "results/datasets/tiny/source.json"


def write_lock(workdir, pid):
    (workdir / "results").mkdir(exist_ok=True)
    record = {"host": socket.gethostname(), "pid": pid, "started": "then", "cwd": "/other"}
    (workdir / "results" / ".fewcells-run.lock").write_text(json.dumps(record))


def test_a_second_run_on_the_same_results_is_refused_until_the_first_ends(tmp_path):
    (tmp_path / "config.yaml").write_text(TINY.read_text())
    config = ("--configfile", str(tmp_path / "config.yaml"))
    lock = tmp_path / "results" / ".fewcells-run.lock"
    other = subprocess.Popen(["sleep", "120"])  # a live run from another checkout
    try:
        write_lock(tmp_path, other.pid)
        refused = snakemake(tmp_path, FETCH, "--cores", "1", *config, check=False)
        assert refused.returncode != 0
        assert f"in use by another run: PID {other.pid} on {socket.gethostname()}" in (
            refused.stderr
        )
        assert not (tmp_path / FETCH).exists()
        snakemake(tmp_path, "-n", *config)  # a dry run needs no lock
        snakemake(tmp_path, "--unlock", *config)  # keeps a live run's lock
        assert json.loads(lock.read_text())["pid"] == other.pid
    finally:
        other.kill()
        other.wait()
    taken = snakemake(tmp_path, FETCH, "--cores", "1", *config)  # the owner is gone: stale
    assert "taking over the stale run lock" in taken.stderr
    assert (tmp_path / FETCH).exists() and not lock.exists()  # released on exit

    write_lock(tmp_path, other.pid)
    snakemake(tmp_path, "--unlock", *config)
    assert not lock.exists()
