"""A run killed during training resumes with --rerun-incomplete and keeps finished trainings."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from test_workflow import ENV, REPO, TINY, planned_jobs, snakemake

pytestmark = pytest.mark.slow


def _wait_for(condition, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_killed_run_resumes_without_losing_finished_trainings(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["run"] = ["tiny_binary"]
    config["experiments"]["tiny_binary"]["train"] = {"max_epochs": 40, "patience": 40}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    train = tmp_path / "results" / "tiny_binary" / "train"
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    run = subprocess.Popen(
        [*command, "--cores", "1", "--configfile", str(path)],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(lambda: any(train.glob("n*/fold*/train_info.json")), "a finished training")
        _wait_for(lambda: any(train.glob("n*/.fold*.tmp-*")), "a training in progress")
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait()
    finished = {p: p.stat().st_mtime_ns for p in train.glob("n*/fold*/model.ckpt")}
    assert finished and len(finished) < 4
    assert list(train.glob("n*/.fold*.tmp-*"))  # the killed job's partial output

    jobs = planned_jobs(tmp_path, "--configfile", str(path), "--rerun-incomplete")
    assert jobs.get("train") == 4 - len(finished)
    snakemake(tmp_path, "--unlock", "--configfile", str(path))  # the killed run's lock
    snakemake(tmp_path, "--cores", "2", "--configfile", str(path), "--rerun-incomplete")
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
    assert len(list(train.glob("n*/fold*/model.ckpt"))) == 4
    assert not list(train.glob("n*/.fold*.tmp-*"))  # nothing half-written is left
    assert planned_jobs(tmp_path, "--configfile", str(path)) == {}
