"""Snakemake runs of the explanation rules (relevance maps, tSNE) on tiny demo data."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml
from test_workflow import TINY, planned_jobs, snakemake

pytestmark = pytest.mark.slow


def _config(**changes) -> dict:
    """The tiny binary experiment on one fold, with `changes` merged into its explain/tsne."""
    config = yaml.safe_load(TINY.read_text())
    config["run"] = ["tiny_binary"]
    experiment = config["experiments"]["tiny_binary"]
    experiment["folds"]["run_folds"] = [0]
    experiment["plots"] = {"dpi": 60}
    for section, values in changes.items():
        experiment[section] = values
    return config


def _write(workdir: Path, name: str, config: dict) -> str:
    path = workdir / name
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def explained(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("explain")
    config = _write(workdir, "config.yaml", _config())
    snakemake(workdir, "--cores", "2", "--configfile", config)
    return workdir


def test_explanations_are_written(explained):
    results = explained / "results" / "tiny_binary"
    folds = pd.read_csv(results / "folds/folds.csv")
    n_test = int(((folds["fold"] == 0) & (folds["role"] == "test")).sum())
    explain = results / "explain" / "fold0"
    shares = pd.read_csv(explain / "relevance_shares.csv")
    assert sorted(shares["size"].unique()) == [6, 12]
    composites = ["epsilon", "epsilon_gamma_box"]  # the default explain.share_composites
    assert list(dict.fromkeys(shares["composite"])) == composites  # one block each
    assert len(shares) == 2 * 2 * n_test
    values = shares.filter(like="share_").stack()
    assert values.between(0, 1).all() and not values.empty
    summary = pd.read_csv(explain / "relevance_summary.csv")
    assert list(dict.fromkeys(summary["composite"])) == composites
    assert set(summary["mask"]) == {"auto", "expert"}  # the demo's generated masks are used
    assert (summary["n_images"] <= n_test).all()
    assert len(summary) == 2 * 2 * 2 * 2  # composites x sizes x regions x mask sources
    ratio = summary["mean"] / summary["area_mean"]
    assert ((summary["enrichment"] - ratio).abs() < 1e-9).all()
    masks = pd.read_csv(explain / "masks.csv")
    assert masks["dice_nucleus"].median() > 0.7
    separation = pd.read_csv(results / "tsne/fold0/separation.csv")
    assert list(separation["size"]) == [6, 12]
    assert (separation["perplexity"] <= 30).all()
    for path in [
        explain / "relevance_maps.png",
        explain / "relevance_shares.png",
        results / "tsne/fold0/tsne.png",
        results / "tsne/fold0/separation.png",
    ]:
        assert path.stat().st_size > 0, path


def test_changing_the_perplexity_plans_only_the_tsne(explained):
    config = _write(explained, "perplexity.yaml", _config(tsne={"perplexity": 5}))
    assert set(planned_jobs(explained, "--configfile", config)) - {"all"} == {"tsne"}


def test_changing_the_lrp_rule_plans_only_the_explanations(explained):
    config = _write(explained, "rule.yaml", _config(explain={"composite": "epsilon_plus_flat"}))
    assert set(planned_jobs(explained, "--configfile", config)) - {"all"} == {"explain"}
    config = _write(explained, "shares.yaml", _config(explain={"share_composites": ["epsilon"]}))
    assert set(planned_jobs(explained, "--configfile", config)) - {"all"} == {"explain"}
    assert planned_jobs(explained, "--configfile", _write(explained, "same.yaml", _config())) == {}
