"""Comparison of experiments trained on identical folds: per-size scores and paired tests.

Each experiment's `evaluation/metrics.csv` holds one row per (size, fold). Only the
(size, fold) pairs present in every experiment are compared, so every summary and every
test uses the same test folds. Pairs of experiments are compared per size with the
Wilcoxon signed-rank test on the per-fold differences (scipy.stats.wilcoxon, two-sided).
With few folds the test has little power: with 5 folds the smallest two-sided p-value is
2 / 2^5 = 0.0625, so nothing reaches p < 0.05 whatever the difference.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy import stats

from fewcells.analysis.learning_curve import fit_learning_curve
from fewcells.atomic import write_csv, write_png, write_text
from fewcells.contracts import COMPARISON_COLUMNS, METRIC_LABELS, WILCOXON_COLUMNS
from fewcells.errors import FewcellsError


def read_metrics(paths: Sequence[str | os.PathLike], names: Sequence[str], metric: str):
    """Long table experiment, size, fold, score of the metric, one file per experiment."""
    if len(paths) != len(names):
        raise FewcellsError(f"{len(paths)} metrics files but {len(names)} names")
    if len(set(names)) != len(names):
        raise FewcellsError(f"experiment names must be distinct: {list(names)}")
    frames = []
    for path, name in zip(paths, names, strict=True):
        table = pd.read_csv(path)
        missing = {"size", "fold", metric} - set(table.columns)
        if missing:
            raise FewcellsError(f"{path}: lacks column(s) {sorted(missing)}")
        if table.duplicated(["size", "fold"]).any():
            raise FewcellsError(f"{path}: repeated (size, fold) rows")
        frames.append(
            pd.DataFrame(
                {
                    "experiment": name,
                    "size": table["size"].astype(int),
                    "fold": table["fold"].astype(int),
                    "score": pd.to_numeric(table[metric], errors="coerce"),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def common_pairs(scores: pd.DataFrame) -> pd.DataFrame:
    """Rows whose (size, fold) is present in every experiment."""
    n_experiments = scores["experiment"].nunique()
    counts = scores.groupby(["size", "fold"])["experiment"].nunique()
    keep = counts[counts == n_experiments].index
    common = scores.set_index(["size", "fold"]).loc[lambda t: t.index.isin(keep)].reset_index()
    if common.empty:
        raise FewcellsError("the experiments share no (size, fold) pair")
    return common.sort_values(["size", "experiment", "fold"], ignore_index=True)


def per_size_table(scores: pd.DataFrame, fits: dict[str, dict]) -> pd.DataFrame:
    """Per size and experiment: folds, mean, sd, median; the learning-curve saturation."""
    rows = []
    for (size, experiment), group in scores.groupby(["size", "experiment"], sort=True):
        values = group["score"].dropna()
        fit = fits[experiment]
        rows.append(
            {
                "size": int(size),
                "experiment": experiment,
                "n_folds": len(values),
                "mean": values.mean() if len(values) else math.nan,
                "sd": values.std(ddof=1) if len(values) > 1 else math.nan,
                "median": values.median() if len(values) else math.nan,
                "n_at_95_plateau": fit["n_at_fraction"] if fit["ok"] else None,
                "plateau": fit["plateau"] if fit["ok"] else math.nan,
            }
        )
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def wilcoxon_table(scores: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    """Per size and pair of experiments: the paired Wilcoxon signed-rank test over folds.

    mean_difference is a - b. p_value is NaN (with a note) when fewer than 2 folds differ;
    min_possible_p = 2 / 2^n_nonzero is the smallest two-sided p the exact test can give.
    """
    rows = []
    wide = scores.pivot_table(index=["size", "fold"], columns="experiment", values="score")
    for size, block in wide.groupby(level="size"):
        for a, b in itertools.combinations(order, 2):
            pair = block[[a, b]].dropna()
            difference = (pair[a] - pair[b]).to_numpy(float)
            nonzero = int(np.count_nonzero(difference))
            row = {
                "size": int(size),
                "experiment_a": a,
                "experiment_b": b,
                "n_pairs": len(difference),
                "n_nonzero": nonzero,
                "mean_difference": difference.mean() if len(difference) else math.nan,
                "statistic": math.nan,
                "p_value": math.nan,
                "min_possible_p": min(1.0, 2.0 / 2**nonzero) if nonzero else math.nan,
                "note": "",
            }
            if nonzero < 2:
                row["note"] = f"not tested: {nonzero} fold(s) with a non-zero difference"
            else:
                result = stats.wilcoxon(pair[a], pair[b])
                row["statistic"], row["p_value"] = float(result.statistic), float(result.pvalue)
            rows.append(row)
    return pd.DataFrame(rows, columns=WILCOXON_COLUMNS)


def sizes_axis(ax, sizes: Sequence[int]) -> None:
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    if len(sizes) == 1:  # keep the experiments' small offsets small
        ax.set_xlim(sizes[0] / 1.5, sizes[0] * 1.5)


def comparison_figure(
    scores: pd.DataFrame,
    order: Sequence[str],
    metric: str,
    *,
    title: str = "",
    labels: Mapping[str, str] | None = None,
    emphasis: str | None = None,
) -> Figure:
    """Metric vs training size per experiment: folds as points, mean ± sd as error bars.

    labels: legend text per experiment (default its name); emphasis: one experiment drawn
    in black with a thicker line (e.g. an ensemble)."""
    label = METRIC_LABELS.get(metric, metric)
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = figure.subplots()
    colours = colormaps["tab10"]
    sizes = sorted(scores["size"].unique().tolist())
    offsets = np.linspace(-0.04, 0.04, len(order)) if len(order) > 1 else [0.0]
    for i, experiment in enumerate(order):
        data = scores[scores["experiment"] == experiment].dropna(subset=["score"])
        shift = 10 ** offsets[i]
        summary = data.groupby("size")["score"].agg(["mean", "std", "count"])
        colour = "black" if experiment == emphasis else colours(i)
        ax.plot(data["size"] * shift, data["score"], "o", ms=3, alpha=0.4, mew=0, color=colour)
        ax.errorbar(
            summary.index * shift,
            summary["mean"],
            yerr=summary["std"].fillna(0),
            fmt="s-",
            ms=4,
            lw=2.2 if experiment == emphasis else 1.2,
            capsize=3,
            color=colour,
            label=(labels or {}).get(experiment, experiment),
            zorder=3 if experiment == emphasis else 2,
        )
    sizes_axis(ax, sizes)
    counts = scores.dropna(subset=["score"]).groupby(["size", "experiment"])["score"].count()
    low, high = int(counts.min()), int(counts.max())
    folds = f"{high} folds" if low == high else f"{low}–{high} folds"
    ax.set_xlabel(f"Training-set size n (images, log scale; {folds} per size, paired)")
    ax.set_ylabel(f"{label} on the test fold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right", title="mean ± sd; points: folds", title_fontsize=8)
    what = f"{label} on identical folds"
    ax.set_title(f"{title}\n{what}" if title else what, fontsize=11)
    return figure


def _number(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_markdown(
    table: pd.DataFrame, tests: pd.DataFrame, metric: str, order: Sequence[str], name: str
) -> str:
    label = METRIC_LABELS.get(metric, metric)
    lines = [
        f"# Comparison {name}: {label}",
        "",
        f"Experiments: {', '.join(order)}; only the (size, fold) pairs present in all are used.",
        "",
        "| size | experiment | folds | mean | sd | median | n at 95% of plateau |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in table.itertuples():
        lines.append(
            f"| {row.size} | {row.experiment} | {row.n_folds} | {_number(row.mean)} | "
            f"{_number(row.sd)} | {_number(row.median)} | {_number(row.n_at_95_plateau)} |"
        )
    lines += [
        "",
        "Paired Wilcoxon signed-rank tests (two-sided, over folds; difference = a - b):",
        "",
        "| size | a | b | pairs | mean difference | W | p | smallest possible p |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in tests.itertuples():
        p = _number(row.p_value) if not row.note else row.note
        lines.append(
            f"| {row.size} | {row.experiment_a} | {row.experiment_b} | {row.n_pairs} | "
            f"{_number(row.mean_difference)} | {_number(row.statistic, 1)} | {p} | "
            f"{_number(row.min_possible_p, 4)} |"
        )
    lines += [
        "",
        "With n folds differing the exact two-sided test cannot give p below 2 / 2^n: "
        "0.0625 with 5 folds, 0.0039 with 10. No correction for multiple testing is applied.",
        "",
    ]
    return "\n".join(lines)


def compare_experiments(
    metrics_files: Sequence[str | os.PathLike],
    names: Sequence[str],
    metric: str,
    out_dir: str | os.PathLike,
    *,
    title: str = "",
    dpi: int = 150,
    n_boot: int = 200,
) -> None:
    """Write comparison.csv, wilcoxon.csv, comparison.md and comparison.png to out_dir."""
    scores = common_pairs(read_metrics(metrics_files, names, metric))
    fits = {
        name: fit_learning_curve(
            scores.loc[scores["experiment"] == name, ["size", "fold", "score"]], n_boot=n_boot
        )
        for name in names
    }
    table = per_size_table(scores, fits)
    tests = wilcoxon_table(scores, names)
    out_dir = Path(out_dir)
    write_csv(table, out_dir / "comparison.csv")
    write_csv(tests, out_dir / "wilcoxon.csv")
    write_text(summary_markdown(table, tests, metric, names, title), out_dir / "comparison.md")
    write_png(
        comparison_figure(scores, names, metric, title=title), out_dir / "comparison.png", dpi
    )
