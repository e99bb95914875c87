"""The benchmark helpers measure real work on real inputs (numbers are printed, not asserted)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fewcells import benchmark
from fewcells.benchmark import (
    benchmark_stacked_sweep,
    plain_loop,
    sweep_cost,
    training,
    write_dedup_images,
    write_synthetic_experiment,
)
from fewcells.data.dedup import DedupSettings, find_duplicates
from fewcells.data.manifest import build_manifest
from fewcells.errors import FewcellsError
from fewcells.training.run import run_training


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_experiment(root, n_images=60, image_size=190)
    return root


def test_synthetic_experiment_is_a_valid_store_and_folds(synthetic):
    folds = pd.read_csv(synthetic / "folds" / "folds.csv")
    assert sorted(folds["fold"].unique()) == list(range(10))
    assert folds[folds.role == "test"].image_id.is_unique
    info = run_training(
        synthetic / "store",
        synthetic / "folds" / "folds.csv",
        synthetic / "folds" / "classes.json",
        0,
        10,
        {"max_epochs": 1, "patience": 1},
        {"name": "paper_cnn"},
        synthetic / "train",
        image_size=190,
    )
    assert info["n_train_images"] == 10 and info["fit_seconds"] > 0


def test_plain_loop_counts_the_training_images_of_every_epoch(synthetic):
    result = plain_loop(synthetic, size=10, epochs=2, threads=1, image_size=190)
    assert result["image_steps"] == 20 and result["seconds"] > 0


def test_dedup_benchmark_images_hold_exactly_the_planted_copies(tmp_path):
    write_dedup_images(tmp_path, 40, n_copies=3, image_size=257)
    _, kept = find_duplicates(build_manifest(tmp_path, "csv"), DedupSettings())
    assert len(kept) == 37
    assert sorted(set(f"Im{i:05d}" for i in range(40)) - set(kept["image_id"])) == [
        "Im00037",
        "Im00038",
        "Im00039",
    ]


def test_sweep_cost_reads_every_training(tmp_path):
    for size, fold, epochs, seconds in [(10, 0, 60, 10.0), (20, 0, 80, 30.0), (20, 1, 200, 50.0)]:
        job = tmp_path / f"n{size}" / f"fold{fold}"
        job.mkdir(parents=True)
        info = {"size": size, "fold": fold, "epochs_run": epochs, "seconds": seconds}
        info["peak_rss_mb"] = 900.0 + size
        (job / "train_info.json").write_text(json.dumps(info))
    cost = sweep_cost(tmp_path, cores=2, sizes=[10, 15, 20], folds=2)
    assert cost["trainings"] == 3
    assert (cost["epochs_median"], cost["epochs_max"]) == (80, 200)
    assert cost["wall_seconds_on_cores"] == 45 and cost["peak_rss_mb_max"] == 920
    # per size: 10 -> 10 s, 20 -> 40 s (mean of two folds), 15 -> 25 s; x 2 folds / 2 cores
    assert cost["projected_trainings"] == 6 and cost["projected_wall_seconds"] == 75


def test_sweep_cost_counts_a_stacked_job_once(tmp_path):
    for fold in range(4):
        job = tmp_path / "n10" / f"fold{fold}"
        job.mkdir(parents=True)
        info = {"size": 10, "fold": fold, "epochs_run": 50, "seconds": 100.0}
        info |= {"peak_rss_mb": 1500.0, "networks_in_job": 4}
        (job / "train_info.json").write_text(json.dumps(info))
    assert sweep_cost(tmp_path, cores=1)["job_seconds_total"] == 100


def test_stacked_sweep_benchmark_trains_every_network(capsys):
    result = benchmark_stacked_sweep(sizes=[10, 20], folds=2, epochs=1, threads=1)
    assert result["networks"] == 4 and result["device"] == "cpu"
    # 1 epoch of 10 and of 20 images, in each of 2 folds
    assert result["image_steps"] == 2 * (10 + 20)
    assert result["image_steps_per_s"] > 0
    assert "4 paper CNNs (sizes 10-20 x 2 folds)" in capsys.readouterr().out


def test_stacked_sweep_benchmark_refuses_sizes_beyond_the_pool():
    with pytest.raises(FewcellsError, match="sizes must be 1-200"):
        benchmark_stacked_sweep(sizes=[250])


def test_sweep_cost_names_an_empty_folder(tmp_path):
    with pytest.raises(FewcellsError, match="train_info.json"):
        sweep_cost(tmp_path, cores=2)


def test_repeated_training_benchmark_reports_medians_of_alternating_runs(monkeypatch, capsys):
    calls = []
    plain_rates, workflow_rates = iter([100.0, 300.0, 200.0]), iter([150.0, 330.0, 450.0])

    def fake_plain(root, **kw):
        calls.append("plain")
        return {"image_steps": next(plain_rates), "seconds": 1.0}

    def fake_workflow(root, **kw):
        calls.append("workflow")
        return {
            "image_steps": next(workflow_rates),
            "seconds": 1.0,
            "peak_rss_mb": 10.0,
            "cpu_kernel": "pytorch",
        }

    monkeypatch.setattr(training, "write_synthetic_experiment", lambda root: None)
    monkeypatch.setattr(training, "plain_loop", fake_plain)
    monkeypatch.setattr(training, "workflow_path", fake_workflow)
    monkeypatch.setattr(
        training,
        "selection_cost",
        lambda root, train_dir: {"n_pool": 200, "diverse_seconds": 0.5, "uncertain_seconds": 2.0},
    )
    result = benchmark.benchmark_training(cores=2, model_name="resnet18", repeats=3)
    assert calls == ["plain", "workflow"] * 3
    assert result["plain_loop_image_steps_per_s"] == 200.0
    assert result["workflow_image_steps_per_s"] == 330.0
    assert result["speedup"] == 1.65
    printed = capsys.readouterr().out
    assert "median of 3: 100.0-300.0" in printed and "first blocks: pytorch" in printed
    assert result["selection_uncertain_round_s"] == 2.0 and result["training_job_fit_s"] == 1.0
    assert "pool of 200 images: diverse (features + k-center) 0.50 s" in printed
    assert "uncertain round (load the n = 100 network, score the pool) 2.00 s" in printed


def test_training_benchmark_needs_one_repeat():
    with pytest.raises(FewcellsError, match="--repeats"):
        benchmark.benchmark_training(repeats=0)


def test_selection_cost_scores_the_pool_with_a_trained_network(synthetic):
    from fewcells.benchmark.selection import selection_cost

    train_dir = synthetic / "train_selection" / "n4" / "fold0"
    run_training(
        synthetic / "store",
        synthetic / "folds" / "folds.csv",
        synthetic / "folds" / "classes.json",
        0,
        4,
        {"max_epochs": 1, "patience": 1},
        {"name": "paper_cnn"},
        train_dir,
        image_size=190,
    )
    cost = selection_cost(synthetic, train_dir)
    folds = pd.read_csv(synthetic / "folds" / "folds.csv")
    assert cost["n_pool"] == len(folds.query("fold == 0 and role == 'pool'")) > 0
    assert cost["diverse_seconds"] > 0 and cost["uncertain_seconds"] > 0
