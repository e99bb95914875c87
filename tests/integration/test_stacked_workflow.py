"""train.engine: stacked through Snakemake: one job per training size writes every fold."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import TINY, planned_jobs, snakemake

pytestmark = pytest.mark.slow


def stacked_config(workdir: Path, sizes: list[int]) -> Path:
    config = yaml.safe_load(TINY.read_text())
    config["run"] = ["tiny_binary"]
    del config["experiments"]["tiny_multiclass"]
    binary = config["experiments"]["tiny_binary"]
    binary["folds"]["sizes"] = sizes
    binary["train"]["engine"] = "stacked"
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def stacked_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("stacked")
    snakemake(workdir, "--cores", "2", "--configfile", str(stacked_config(workdir, [6, 12])))
    return workdir


def test_one_job_per_size_writes_every_fold(stacked_run):
    results = stacked_run / "results"
    for size in (6, 12):
        assert (results / f"logs/tiny_binary/train/n{size}_stacked.log").exists()
        for fold in (0, 1):
            predictions = pd.read_csv(
                results / f"tiny_binary/train/n{size}/fold{fold}/predictions.csv"
            )
            assert set(predictions["split"]) == {"test", "val"}
    metrics = pd.read_csv(results / "tiny_binary/evaluation/metrics.csv")
    assert sorted(metrics["size"].unique()) == [6, 12] and len(metrics) == 4


def test_adding_a_size_plans_one_stacked_job(stacked_run):
    config = stacked_config(stacked_run, [6, 12])
    assert planned_jobs(stacked_run, "--configfile", str(config)) == {}
    config = stacked_config(stacked_run, [6, 12, 18])
    planned = planned_jobs(stacked_run, "--configfile", str(config))
    assert planned["train_stacked_tiny_binary"] == 1
    assert "train" not in planned and "folds" not in planned
