"""Selection strategies in the workflow: the active-learning rounds as Snakemake jobs (a new
size plans one round and one training; a run resumes at the last finished round), the diverse
order and the comparison of the three strategies on the tiny demo data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests" / "integration" / "configs" / "tiny_selection.yaml"
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

pytestmark = pytest.mark.slow


def _snakemake(tmp_path, config, *args):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
    command += [*args, "--configfile", str(path)]
    result = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _planned(tmp_path, config, *targets):
    out = _snakemake(tmp_path, config, *targets, "-n", "--quiet", "rules")
    return {
        parts[0]: int(parts[1])
        for parts in map(str.split, out.splitlines())
        if len(parts) == 2 and parts[1].isdigit()
    }


def test_rounds_resume_and_strategies_compare(tmp_path):
    config = yaml.safe_load(CONFIG.read_text())
    uncertain = "results/tiny_uncertain"
    # The first two rounds only: what a run killed during the third round leaves.
    _snakemake(tmp_path, config, "--cores", "1", f"{uncertain}/selection/fold0/n9/folds.csv")
    assert not (tmp_path / uncertain / "train" / "n9").exists()
    last = f"{uncertain}/train/n12/fold0/model.ckpt"
    # Resumes at the last finished round: trains n = 9, chooses n = 12, trains it.
    assert _planned(tmp_path, config, last) == {"train": 2, "select_round": 1, "total": 3}
    # Adding a size (a round) plans one more round and one more training.
    bigger = yaml.safe_load(CONFIG.read_text())
    bigger["experiments"]["tiny_uncertain"]["folds"]["sizes"] = [6, 9, 12, 15]
    more = _planned(tmp_path, bigger, f"{uncertain}/train/n15/fold0/model.ckpt")
    assert more == {"train": 3, "select_round": 2, "total": 5}

    targets = [f"results/{e}/selection/class_mix.csv" for e in ("tiny_diverse", "tiny_uncertain")]
    targets += [
        f"results/comparisons/tiny_strategies/{f}" for f in ("wilcoxon.csv", "strategies.csv")
    ]
    _snakemake(tmp_path, config, "--cores", "1", *targets)
    picks = pd.read_csv(tmp_path / uncertain / "selection" / "selection.csv")
    assert list(picks.columns) == ["fold", "round", "image_id", "score", "reason"]
    assert picks.groupby("round").size().tolist() == [6, 3, 3]
    assert picks["image_id"].is_unique
    rounds = pd.read_csv(tmp_path / uncertain / "selection" / "fold0" / "n12" / "folds.csv")
    first = rounds[rounds["role"] == "pool"].sort_values("rank")["image_id"].iloc[:12]
    assert first.tolist() == picks["image_id"].tolist()
    random_pool = pd.read_csv(tmp_path / "results/tiny_random/folds/folds.csv")
    random_first = random_pool.query("fold == 0 and role == 'pool' and rank < 6")
    assert set(random_first["image_id"]) == set(picks.query("round == 0")["image_id"])
    mix = pd.read_csv(tmp_path / "results/tiny_diverse/selection/class_mix.csv")
    mix = mix[mix["fold"] == 0]  # the diverse order is written for every fold
    assert mix.groupby("size")["n_images"].sum().to_dict() == {6: 6, 9: 9, 12: 12}
    reach = pd.read_csv(tmp_path / "results/comparisons/tiny_strategies/strategies.csv")
    assert reach["experiment"].tolist() == ["tiny_random", "tiny_diverse", "tiny_uncertain"]
    assert (reach["reference"] == "tiny_random").all() and (reach["n_folds"] == 1).all()
    # The same test images in every strategy, so compare pairs them.
    test_sets = [
        set(pd.read_csv(tmp_path / f"results/{e}/folds/folds.csv").query("role == 'test'").image_id)
        for e in ("tiny_random", "tiny_diverse", "tiny_uncertain")
    ]
    assert test_sets[0] == test_sets[1] == test_sets[2]
    # Nothing left to do, and the selection benchmark is written beside the training's.
    assert _planned(tmp_path, config, *targets) == {}
    assert (tmp_path / "results/benchmarks/tiny_uncertain/selection/fold0_n12.tsv").is_file()


def test_diverse_folds_job_declares_its_picks(tmp_path):
    """folds/selection.csv is an output of the diverse experiment's folds job (folds_diverse);
    the random experiment's folds job keeps its two outputs (no selection.csv to make)."""
    config = yaml.safe_load(CONFIG.read_text())
    planned = _planned(tmp_path, config, "results/tiny_diverse/folds/selection.csv")
    assert planned["folds_diverse"] == 1 and "folds" not in planned
    assert _planned(tmp_path, config, "results/tiny_random/folds/folds.csv")["folds"] == 1
    path = tmp_path / "config.yaml"
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-n"]
    command += ["results/tiny_random/folds/selection.csv", "--configfile", str(path)]
    result = subprocess.run(command, cwd=tmp_path, env=ENV, capture_output=True, text=True)
    assert result.returncode != 0 and "MissingRuleException" in result.stdout + result.stderr


def test_network_features_make_the_diverse_folds_wait_for_the_networks(tmp_path):
    """features {experiment, size}: rule folds_diverse needs that experiment's network of each
    fold it trains; adding the key re-plans that folds job (and the network), nothing else;
    the default (stats) leaves the folds job's command as it was."""
    config = yaml.safe_load(CONFIG.read_text())
    diverse, random = "results/tiny_diverse/folds/folds.csv", "results/tiny_random/folds/folds.csv"
    command = _snakemake(tmp_path, config, diverse, "-n", "-p")
    assert '"strategy": "diverse"' in command and '"features"' not in command
    _snakemake(tmp_path, config, "--cores", "1", diverse, random)
    named = yaml.safe_load(CONFIG.read_text())
    features = {"experiment": "tiny_random", "size": 6}
    named["experiments"]["tiny_diverse"]["folds"]["selection"]["features"] = features
    assert _planned(tmp_path, config, diverse, random) == {}
    # the diverse folds job, the random network of fold 0 and the store it trains from
    planned = _planned(tmp_path, named, diverse)
    assert planned == {"store": 1, "train": 1, "folds_diverse": 1, "total": 3}
    assert _planned(tmp_path, named, random) == {}
    dry = _snakemake(tmp_path, named, diverse, "-n", "-p")
    assert "results/tiny_random/train/n6/fold0/model.ckpt" in dry
    assert "results/tiny_random/train/n6/fold1" not in dry  # only the folds it trains
    _snakemake(tmp_path, named, "--cores", "1", diverse)
    picks = pd.read_csv(tmp_path / "results/tiny_diverse/folds/selection.csv")
    folds = pd.read_csv(tmp_path / diverse)
    assert set(picks["fold"]) == {0}  # fold 1 has no network: it keeps the random order
    assert len(picks) == len(folds.query("fold == 0 and role == 'pool'"))
    assert _planned(tmp_path, named, diverse) == {}


def test_pretrained_features_order_every_fold_after_the_pretraining(tmp_path):
    """features {pretrained}: rule folds_diverse waits for that experiment's pretraining (on
    another dataset) and orders every fold's pool by its hidden layer."""
    config = yaml.safe_load(CONFIG.read_text())
    config["datasets"]["other"] = {"kind": "demo", "demo": {"seed": 2, "n_per_class": 12}}
    config["experiments"]["tiny_source"] = {
        "dataset": "other",
        "folds": {"k": 2, "n_val": 6, "sizes": [10]},
        "pretrain": {"val_fraction": 0.2, "batch_size": 16, "max_epochs": 2, "patience": 1},
    }
    features = {"pretrained": "tiny_source"}
    config["experiments"]["tiny_diverse"]["folds"]["selection"]["features"] = features
    diverse = "results/tiny_diverse/folds/folds.csv"
    planned = _planned(tmp_path, config, diverse)
    assert planned["pretrain"] == 1 and planned["folds_diverse"] == 1
    assert "results/pretrained/tiny_source/model.ckpt" in _snakemake(
        tmp_path, config, diverse, "-n", "-p"
    )
    _snakemake(tmp_path, config, "--cores", "1", diverse)
    picks = pd.read_csv(tmp_path / "results/tiny_diverse/folds/selection.csv")
    folds = pd.read_csv(tmp_path / diverse)
    assert set(picks["fold"]) == {0, 1}  # one network for every fold
    assert len(picks) == len(folds.query("role == 'pool'"))
    assert _planned(tmp_path, config, diverse) == {}
