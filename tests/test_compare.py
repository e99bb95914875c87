from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from fewcells.analysis.compare import (
    common_pairs,
    compare_experiments,
    read_metrics,
    wilcoxon_table,
)
from fewcells.config import validate_config
from fewcells.errors import FewcellsError
from fewcells.plan import compare_metric

REPO = Path(__file__).resolve().parents[1]
TINY = yaml.safe_load((REPO / "tests/integration/configs/tiny_demo.yaml").read_text())


def _metrics(path: Path, rows: list[tuple[int, int, float]]) -> Path:
    table = pd.DataFrame(rows, columns=["size", "fold", "roc_auc"]).assign(accuracy=0.5)
    table.to_csv(path, index=False)
    return path


A_SCORES = {10: [0.61, 0.70, 0.66, 0.58, 0.72], 20: [0.80, 0.82, 0.79, 0.85, 0.83]}
B_SCORES = {10: [0.60, 0.65, 0.67, 0.50, 0.62], 20: [0.90, 0.91, 0.86, 0.95, 0.88]}


@pytest.fixture
def two_tables(tmp_path):
    a = [(size, fold, s) for size, v in A_SCORES.items() for fold, s in enumerate(v)]
    b = [(size, fold, s) for size, v in B_SCORES.items() for fold, s in enumerate(v)]
    a.append((40, 0, 0.9))  # only in a: must be left out
    b.append((10, 7, 0.3))  # fold only in b: must be left out
    return _metrics(tmp_path / "a.csv", a), _metrics(tmp_path / "b.csv", b)


def test_wilcoxon_matches_scipy(two_tables):
    scores = common_pairs(read_metrics(two_tables, ["a", "b"], "roc_auc"))
    tests = wilcoxon_table(scores, ["a", "b"]).set_index("size")
    for size in (10, 20):
        expected = stats.wilcoxon(A_SCORES[size], B_SCORES[size])
        assert tests.loc[size, "statistic"] == pytest.approx(expected.statistic)
        assert tests.loc[size, "p_value"] == pytest.approx(expected.pvalue)
        assert tests.loc[size, "n_pairs"] == 5
        assert tests.loc[size, "mean_difference"] == pytest.approx(
            np.mean(np.subtract(A_SCORES[size], B_SCORES[size]))
        )
    # every fold of b is better at size 20: the smallest p five folds allow
    assert tests.loc[20, "p_value"] == pytest.approx(0.0625)
    assert tests.loc[20, "min_possible_p"] == pytest.approx(0.0625)


def test_fewer_than_two_differences_give_nan_with_a_note(tmp_path):
    a = _metrics(tmp_path / "a.csv", [(5, f, 0.5) for f in range(4)])
    b = _metrics(tmp_path / "b.csv", [(5, f, 0.5 + (f == 0) * 0.1) for f in range(4)])
    tests = wilcoxon_table(common_pairs(read_metrics([a, b], ["a", "b"], "roc_auc")), ["a", "b"])
    assert math.isnan(tests.loc[0, "p_value"]) and "1 fold" in tests.loc[0, "note"]


def test_only_common_size_fold_pairs_are_compared(two_tables, tmp_path):
    compare_experiments(two_tables, ["a", "b"], "roc_auc", tmp_path / "out", title="t", n_boot=5)
    table = pd.read_csv(tmp_path / "out/comparison.csv")
    assert sorted(table["size"].unique()) == [10, 20]
    assert (table["n_folds"] == 5).all()
    row = table[(table["size"] == 10) & (table["experiment"] == "b")].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(B_SCORES[10]))
    assert row["sd"] == pytest.approx(np.std(B_SCORES[10], ddof=1))
    assert row["median"] == pytest.approx(np.median(B_SCORES[10]))


def test_outputs_are_written(two_tables, tmp_path):
    out = tmp_path / "out"
    compare_experiments(two_tables, ["a", "b"], "roc_auc", out, title="t", n_boot=5)
    for name in ("comparison.csv", "wilcoxon.csv", "comparison.md", "comparison.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "0.0625" in (out / "comparison.md").read_text()
    assert len(pd.read_csv(out / "wilcoxon.csv")) == 2


def test_no_common_pair_is_an_error(tmp_path):
    a = _metrics(tmp_path / "a.csv", [(5, 0, 0.5)])
    b = _metrics(tmp_path / "b.csv", [(6, 0, 0.5)])
    with pytest.raises(FewcellsError, match="no \\(size, fold\\) pair"):
        common_pairs(read_metrics([a, b], ["a", "b"], "roc_auc"))


def test_cli_compare(two_tables, tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "fewcells.cli", "compare", *map(str, two_tables)]
    command += ["--names", "a", "b", "--metric", "roc_auc", "--out", str(out)]
    subprocess.run(command, check=True, capture_output=True)
    assert (out / "comparison.png").exists()


def _with_compare(**changes) -> dict:
    config = copy.deepcopy(TINY)
    config["experiments"]["tiny_binary_b"] = copy.deepcopy(config["experiments"]["tiny_binary"])
    config["experiments"]["tiny_binary_b"]["model"] = {"name": "resnet18"}
    config["run"].append("tiny_binary_b")
    config["compare"] = [{"name": "cnn_vs_resnet", "experiments": ["tiny_binary", "tiny_binary_b"]}]
    for experiment, edit in changes.items():
        edit(config, config["experiments"].get(experiment))
    return config


def test_a_valid_compare_entry_gets_the_main_metric():
    config = validate_config(_with_compare())
    assert compare_metric(config, config["compare"][0]) == "roc_auc"
    assert validate_config(TINY)["compare"] == []


def test_sizes_and_run_folds_may_differ():
    def edit(config, experiment):
        experiment["folds"].update(sizes=[6], run_folds=[1])

    validate_config(_with_compare(tiny_binary_b=edit))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c, e: e["folds"].update(seed=3), "differ in folds"),
        (lambda c, e: e["folds"].update(k=3), "differ in folds"),
        (lambda c, e: e.pop("classes"), "differ in task"),
        (lambda c, e: c["compare"][0]["experiments"].append("nope"), "unknown experiment"),
        (lambda c, e: c["run"].remove("tiny_binary_b"), "not in `run`"),
        (lambda c, e: c["compare"][0].update(metric="macro_f1"), "not a metric"),
    ],
)
def test_bad_compare_entries_are_rejected_naming_the_key(change, message):
    config = _with_compare(tiny_binary_b=change)
    with pytest.raises(FewcellsError, match=r"config key compare\[0\]") as error:
        validate_config(config)
    assert message in str(error.value)


def test_different_dataset_is_rejected():
    def edit(config, experiment):
        config["datasets"]["other"] = copy.deepcopy(config["datasets"]["tiny"])
        experiment["dataset"] = "other"

    with pytest.raises(FewcellsError, match=r"compare\[0\]\.experiments.*dataset"):
        validate_config(_with_compare(tiny_binary_b=edit))


def test_an_ensemble_entry_is_valid_and_defaults_to_off():
    config = validate_config(_with_compare())
    assert config["compare"][0]["ensemble"] is False
    with_ensemble = _with_compare()
    with_ensemble["compare"][0]["ensemble"] = True
    assert validate_config(with_ensemble)["compare"][0]["ensemble"] is True


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c, e: e["folds"].update(seed=3), "differ in folds"),
        (lambda c, e: e["folds"].update(test_size=4), "differ in folds"),
        (lambda c, e: e["folds"].update(sizes=[7]), "share no trained (size, fold)"),
        (
            lambda c, e: (
                e["folds"].update(run_folds=[1])
                or c["experiments"]["tiny_binary"]["folds"].update(run_folds=[0])
            ),
            "share no trained (size, fold)",
        ),
    ],
)
def test_ensemble_of_experiments_on_different_folds_is_rejected(change, message):
    config = _with_compare(tiny_binary_b=change)
    config["compare"][0]["ensemble"] = True
    with pytest.raises(FewcellsError, match=r"config key compare\[0\]") as error:
        validate_config(config)
    assert message in str(error.value)


def _curve_table(path: Path, tau: float, plateau: float = 0.9, folds: int = 4) -> Path:
    """Per-fold scores on plateau - (plateau - 0.5) exp(-n / tau), folds offset by ±0.01
    and ±0.02 (mean offset 0), sizes 10..100."""
    offsets = [-0.02, -0.01, 0.01, 0.02][:folds]
    rows = [
        (n, fold, plateau - (plateau - 0.5) * math.exp(-n / tau) + offset)
        for n in range(10, 101, 10)
        for fold, offset in enumerate(offsets)
    ]
    return _metrics(path, rows)


def test_strategies_images_to_reach_95_percent_of_random_plateau(tmp_path):
    from fewcells.analysis.strategies import compare_strategies

    random_ = _curve_table(tmp_path / "random.csv", tau=15)  # mean 0.872 at n = 40
    diverse = _curve_table(tmp_path / "diverse.csv", tau=8)  # 0.867 at n = 20
    flat = _metrics(
        tmp_path / "flat.csv", [(n, f, 0.7) for n in range(10, 101, 10) for f in range(4)]
    )
    reach = compare_strategies(
        [diverse, random_, flat],
        ["diverse", "random", "flat"],
        "roc_auc",
        "random",
        tmp_path / "out",
        n_boot=20,
    ).set_index("experiment")
    assert reach.loc["random", "plateau"] == pytest.approx(0.9, abs=1e-3)
    assert reach.loc["random", "target"] == pytest.approx(0.855, abs=1e-3)
    assert reach.loc["random", "n_to_reach"] == 40
    assert reach.loc["diverse", "n_to_reach"] == 20
    assert reach.loc["diverse", "mean_at_n"] == pytest.approx(0.9 - 0.4 * math.exp(-2.5))
    assert pd.isna(reach.loc["flat", "n_to_reach"])
    assert not reach["plateau_extrapolated"].any()
    assert (reach["reference"] == "random").all() and (reach["n_folds"] == 4).all()
    low, high = reach.loc["random", ["plateau_ci_low", "plateau_ci_high"]]
    assert low <= 0.9 + 1e-3 and high >= 0.9 - 1e-3
    written = pd.read_csv(tmp_path / "out/strategies.csv")
    assert written["experiment"].tolist() == ["diverse", "random", "flat"]
    assert (tmp_path / "out/strategies.png").stat().st_size > 0


def test_a_reference_still_rising_at_the_largest_size_has_an_extrapolated_plateau(tmp_path):
    from fewcells.analysis.strategies import compare_strategies

    rising = _curve_table(tmp_path / "random.csv", tau=80)  # 0.79 of 0.9 at n = 100
    reach = compare_strategies([rising], ["random"], "roc_auc", "random", tmp_path, n_boot=20)
    assert reach["plateau_extrapolated"].tolist() == [True]
    assert pd.isna(reach["n_to_reach"].iloc[0])


def test_an_extrapolated_plateau_is_named_in_the_legend_not_the_axis(tmp_path):
    from fewcells.analysis.compare import common_pairs, read_metrics
    from fewcells.analysis.learning_curve import fit_learning_curve
    from fewcells.analysis.strategies import fold_band, images_to_reach, strategies_figure

    rising = _curve_table(tmp_path / "random.csv", tau=80)
    scores = common_pairs(read_metrics([rising], ["random"], "roc_auc"))
    band = fold_band(scores)
    reach = images_to_reach(band, fit_learning_curve(scores, n_boot=20), ["random"], "random")
    ax = strategies_figure(band, reach, ["random"], "roc_auc").axes[0]
    assert ax.get_ylabel() == "ROC-AUC on the test fold (mean over folds)"
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "95 % of random's plateau (extrapolated beyond n = 100)" in legend


def test_strategies_band_is_the_t_interval_over_folds(two_tables):
    from fewcells.analysis.strategies import fold_band

    band = fold_band(common_pairs(read_metrics(two_tables, ["a", "b"], "roc_auc")))
    row = band[(band["experiment"] == "a") & (band["size"] == 10)].iloc[0]
    values = A_SCORES[10]
    half = stats.t.ppf(0.975, 4) * np.std(values, ddof=1) / math.sqrt(5)
    assert row["n_folds"] == 5
    assert row["ci_low"] == pytest.approx(np.mean(values) - half)
    assert row["ci_high"] == pytest.approx(np.mean(values) + half)


def test_strategies_band_stays_within_the_metric_range():
    from fewcells.analysis.strategies import fold_band

    scores = pd.DataFrame(
        {
            "experiment": "uncertain",
            "size": 100,
            "fold": range(5),
            "score": [1.0, 0.974, 1.0, 0.212, 0.974],  # one network that never learned
        }
    )
    row = fold_band(scores).iloc[0]
    assert row["mean"] + stats.t.ppf(0.975, 4) * row["sd"] / math.sqrt(5) > 1
    assert row["ci_high"] == 1.0 and 0 <= row["ci_low"] < row["mean"]


def test_strategies_reference_must_be_compared(two_tables, tmp_path):
    from fewcells.analysis.strategies import compare_strategies

    with pytest.raises(FewcellsError, match="reference"):
        compare_strategies(two_tables, ["a", "b"], "roc_auc", "random", tmp_path)
