"""Runs killed during the store step and during a training: the resumed run changes no
earlier result and leaves no temporary file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_workflow import ENV, REPO, TINY, planned_jobs, snakemake

pytestmark = pytest.mark.slow


def start(workdir: Path, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args]
    return subprocess.Popen(
        command,
        cwd=workdir,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill(run: subprocess.Popen) -> None:
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()


def wait_for(condition, what: str, poll: float, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def results_state(results: Path) -> dict[Path, tuple[int, int]]:
    """(size, mtime) of every finished result; logs and benchmarks are rewritten by reruns."""
    return {
        path: (path.stat().st_size, path.stat().st_mtime_ns)
        for path in results.rglob("*")
        if path.is_file()
        and ".tmp-" not in str(path)
        and path.relative_to(results).parts[0] not in ("logs", "benchmarks")
        and path.name != ".fewcells-run.lock"
    }


def temporaries(results: Path) -> list[Path]:
    return [path for path in results.rglob("*") if ".tmp-" in path.name]


def test_killed_store_and_training_change_no_earlier_result(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["run"] = ["tiny_binary"]
    config["datasets"]["tiny"]["demo"]["n_per_class"] = 40  # a store step of a few seconds
    config["experiments"]["tiny_binary"]["train"] = {"max_epochs": 40, "patience": 40}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    configfile = ("--configfile", str(path))
    results = tmp_path / "results"
    experiment = results / "tiny_binary"

    run = start(tmp_path, "--cores", "1", *configfile)
    try:
        # the store step writes for well under a second: look often
        wait_for(lambda: any(experiment.glob(".store.tmp-*")), "the store step", poll=0.002)
    finally:
        kill(run)
    assert not (experiment / "store" / "images.npy").exists()
    before_store = results_state(results)
    assert any(p.name == "kept.csv" for p in before_store)

    snakemake(tmp_path, "--unlock", *configfile)  # Snakemake's own lock of the killed run
    run = start(tmp_path, "--cores", "1", "--rerun-incomplete", *configfile)
    train = experiment / "train"
    try:
        wait_for(lambda: any(train.glob("n*/fold*/train_info.json")), "a training", poll=0.2)
        wait_for(lambda: any(train.glob("n*/.fold*.tmp-*")), "a training in progress", poll=0.2)
    finally:
        kill(run)
    before_training = results_state(results)
    assert {p: before_training[p] for p in before_store} == before_store
    killed = [p.parent / p.name[1:].split(".tmp-")[0] for p in train.glob("n*/.fold*.tmp-*")]
    assert killed

    snakemake(tmp_path, "--unlock", *configfile)
    # A run with nothing to do for the killed training still removes what it left.
    snakemake(tmp_path, "results/tiny_binary/folds/folds.csv", "--cores", "1", *configfile)
    assert temporaries(results) == []
    assert not any(folder.exists() for folder in killed)

    snakemake(tmp_path, "--cores", "2", "--rerun-incomplete", *configfile)
    after = results_state(results)
    assert {p: after[p] for p in before_training} == before_training
    assert len(list(train.glob("n*/fold*/model.ckpt"))) == 4
    assert temporaries(results) == [] and not (results / ".fewcells-run.lock").exists()
    assert planned_jobs(tmp_path, *configfile) == {}
