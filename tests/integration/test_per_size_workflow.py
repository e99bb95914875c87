"""train.engine sequential, stacked and stacked_sweep through Snakemake: one job per training
size (one job for every size: stacked_sweep) writes every fold."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import TINY, planned_jobs, snakemake

pytestmark = pytest.mark.slow


def per_size_config(workdir: Path, engine: str, sizes: list[int]) -> Path:
    config = yaml.safe_load(TINY.read_text())
    config["run"] = ["tiny_binary"]
    del config["experiments"]["tiny_multiclass"]
    binary = config["experiments"]["tiny_binary"]
    binary["folds"]["sizes"] = sizes
    binary["train"]["engine"] = engine
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module", params=["sequential", "stacked", "stacked_sweep"])
def per_size_run(request, tmp_path_factory) -> tuple[str, Path]:
    engine = request.param
    workdir = tmp_path_factory.mktemp(engine)
    config = per_size_config(workdir, engine, [6, 12])
    snakemake(workdir, "--cores", "2", "--configfile", str(config))
    return engine, workdir


def test_one_job_per_size_writes_every_fold(per_size_run):
    engine, workdir = per_size_run
    results = workdir / "results"
    logs = {p.name for p in (results / "logs/tiny_binary/train").iterdir()}
    if engine == "stacked_sweep":
        assert logs == {"stacked_sweep.log"}
    else:
        assert logs == {f"n6_{engine}.log", f"n12_{engine}.log"}
    for size in (6, 12):
        for fold in (0, 1):
            predictions = pd.read_csv(
                results / f"tiny_binary/train/n{size}/fold{fold}/predictions.csv"
            )
            assert set(predictions["split"]) == {"test", "val"}
    metrics = pd.read_csv(results / "tiny_binary/evaluation/metrics.csv")
    assert sorted(metrics["size"].unique()) == [6, 12] and len(metrics) == 4


def test_adding_a_size_plans_one_training_job(per_size_run):
    engine, workdir = per_size_run
    config = per_size_config(workdir, engine, [6, 12])
    assert planned_jobs(workdir, "--configfile", str(config)) == {}
    config = per_size_config(workdir, engine, [6, 12, 18])
    planned = planned_jobs(workdir, "--configfile", str(config))
    assert planned[f"train_{engine}_tiny_binary"] == 1
    assert "train" not in planned and "folds" not in planned


def replicated_config(workdir: Path, engine: str) -> Path:
    """per_size_config at sizes 6 and 12 with two networks per fold at size 6."""
    path = per_size_config(workdir, engine, [6, 12])
    config = yaml.safe_load(path.read_text())
    config["experiments"]["tiny_binary"]["train"] |= {"replicates": 2, "replicate_sizes": [6]}
    path.write_text(yaml.safe_dump(config))
    return path


def test_adding_replicates_trains_only_the_new_networks(per_size_run):
    engine, workdir = per_size_run
    if engine != "sequential":
        config = replicated_config(workdir, engine)
        result = snakemake(workdir, "-n", "--configfile", str(config), check=False)
        assert result.returncode != 0
        refusal = "train.replicates > 1 needs 'per_fold' or 'sequential'"
        assert refusal in result.stdout + result.stderr
        return
    config = replicated_config(workdir, engine)
    planned = planned_jobs(workdir, "--configfile", str(config))
    assert planned["train_sequential_tiny_binary_r2"] == 1
    assert "train_sequential_tiny_binary_r1" not in planned and "folds" not in planned
    snakemake(workdir, "--cores", "2", "--configfile", str(config))
    results = workdir / "results/tiny_binary"
    for fold in (0, 1):
        first = pd.read_csv(results / f"train/n6/fold{fold}/predictions.csv")
        second = pd.read_csv(results / f"train/n6/fold{fold}_rep1/predictions.csv")
        assert set(second["replicate"]) == {1} and first["image_id"].equals(second["image_id"])
        assert not first["p_blast"].equals(second["p_blast"])  # another seed
    metrics = pd.read_csv(results / "evaluation/metrics.csv")
    assert len(metrics) == 2 * 2 + 2 and set(metrics["replicate"]) == {0, 1}
    summary = (results / "evaluation/summary.md").read_text()
    assert "s.d. between seeds" in summary and "## Produced by" in summary
    assert (results / "evaluation/spread_folds_seeds.png").is_file()
