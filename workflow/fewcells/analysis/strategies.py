"""Selection strategies compared: every experiment's learning curve with a band over folds,
and the training size each needs to reach 95 % of the reference (random) strategy's plateau.

The reference's plateau is the `a` of its fitted learning curve (fewcells.analysis.
learning_curve: score(n) = a - (a - b) exp(-n / tau), least squares on the per-fold scores,
95 % percentile bootstrap over folds). An experiment's n_to_reach is the smallest training
size run whose mean over folds reaches fraction x plateau; n_to_reach_low / _high are the
same with the ends of the plateau's confidence interval (a range, not a confidence interval
of n). plateau_extrapolated marks a reference whose own fitted curve does not reach the
fraction of its plateau within the sizes run: the plateau, and so the target, lie beyond the
data. Only the (size, fold) pairs present in every experiment are used (common_pairs).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy import stats

from fewcells.analysis.compare import common_pairs, read_metrics, sizes_axis
from fewcells.analysis.learning_curve import fit_learning_curve
from fewcells.atomic import write_csv, write_png
from fewcells.contracts import METRIC_LABELS
from fewcells.errors import FewcellsError

PLATEAU_FRACTION = 0.95
REACH_COLUMNS = [
    "experiment",
    "reference",
    "n_folds",
    "plateau",
    "plateau_ci_low",
    "plateau_ci_high",
    "plateau_extrapolated",
    "fraction",
    "target",
    "n_to_reach",
    "mean_at_n",
    "n_to_reach_low",
    "n_to_reach_high",
    "largest_size",
]


def fold_band(scores: pd.DataFrame) -> pd.DataFrame:
    """Per experiment and size: n_folds, mean, sd and the two-sided 95 % t interval of the
    mean over folds (ci_low, ci_high; NaN with fewer than 2 folds), clipped to [0, 1], the
    range of every metric (METRIC_LABELS): with 5 folds the t interval can pass 1."""
    rows = []
    for (experiment, size), group in scores.groupby(["experiment", "size"], sort=True):
        values = group["score"].dropna().to_numpy(float)
        n = len(values)
        mean = values.mean() if n else math.nan
        sd = values.std(ddof=1) if n > 1 else math.nan
        half = stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
        rows.append(
            {
                "experiment": experiment,
                "size": int(size),
                "n_folds": n,
                "mean": mean,
                "sd": sd,
                "ci_low": float(np.clip(mean - half, 0.0, 1.0)),
                "ci_high": float(np.clip(mean + half, 0.0, 1.0)),
            }
        )
    return pd.DataFrame(rows)


def first_size_reaching(means: pd.Series, target: float | None):
    """Smallest size (index of `means`) whose mean is >= target; None if none is."""
    if target is None or not np.isfinite(target):
        return None
    reached = means[means >= target]
    return int(reached.index.min()) if len(reached) else None


def images_to_reach(
    band: pd.DataFrame,
    fit: dict,
    order: Sequence[str],
    reference: str,
    fraction: float = PLATEAU_FRACTION,
) -> pd.DataFrame:
    """One row per experiment: the reference's plateau (and CI), the target fraction x
    plateau and the smallest size whose mean reaches it (REACH_COLUMNS)."""
    plateau = fit["plateau"] if fit["ok"] else math.nan
    extrapolated = bool(fit["ok"] and fit["n_at_fraction"] is None)
    ci = fit.get("plateau_ci") or [None, None]
    low, high = (math.nan if v is None else v for v in ci)
    rows = []
    for experiment in order:
        block = band[band["experiment"] == experiment]
        means = block.set_index("size")["mean"].sort_index()
        n = first_size_reaching(means, fraction * plateau)
        rows.append(
            {
                "experiment": experiment,
                "reference": reference,
                "n_folds": int(block["n_folds"].max()) if len(block) else 0,
                "plateau": plateau,
                "plateau_ci_low": low,
                "plateau_ci_high": high,
                "plateau_extrapolated": extrapolated,
                "fraction": fraction,
                "target": fraction * plateau,
                "n_to_reach": n,
                "mean_at_n": means.get(n, math.nan) if n is not None else math.nan,
                "n_to_reach_low": first_size_reaching(means, fraction * low),
                "n_to_reach_high": first_size_reaching(means, fraction * high),
                "largest_size": int(means.index.max()) if len(means) else None,
            }
        )
    return pd.DataFrame(rows, columns=REACH_COLUMNS).astype(
        {c: "Int64" for c in ("n_to_reach", "n_to_reach_low", "n_to_reach_high")}
    )


def strategies_figure(
    band: pd.DataFrame, reach: pd.DataFrame, order: Sequence[str], metric: str, title: str = ""
) -> Figure:
    """Mean over folds per experiment and size (line) with its 95 % t interval (band); the
    dashed line is 95 % of the reference's fitted plateau (marked extrapolated when the
    reference's curve does not reach it within the sizes run), and the legend gives each
    experiment's folds and images to reach it."""
    label = METRIC_LABELS.get(metric, metric)
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = figure.subplots()
    colours = colormaps["tab10"]
    for i, experiment in enumerate(order):
        data = band[band["experiment"] == experiment].sort_values("size")
        row = reach.set_index("experiment").loc[experiment]
        n = "not reached" if pd.isna(row["n_to_reach"]) else f"n = {int(row['n_to_reach'])}"
        ax.plot(
            data["size"],
            data["mean"],
            "o-",
            ms=4,
            color=colours(i),
            label=f"{experiment} ({int(row['n_folds'])} folds; 95 %: {n})",
        )
        ax.fill_between(data["size"], data["ci_low"], data["ci_high"], alpha=0.2, color=colours(i))
    target = reach["target"].iloc[0]
    if np.isfinite(target):
        reference = reach["reference"].iloc[0]
        target_label = f"95 % of {reference}'s plateau"
        if reach["plateau_extrapolated"].iloc[0]:
            target_label += f" (extrapolated beyond n = {int(band['size'].max())})"
        ax.axhline(target, ls="--", lw=1, color="grey", label=target_label)
    sizes_axis(ax, sorted(band["size"].unique().tolist()))
    ax.set_xlabel("Training-set size n (images, log scale)")
    ax.set_ylabel(f"{label} on the test fold (mean over folds)")
    ax.grid(alpha=0.3)
    ax.legend(
        fontsize=7,
        loc="lower right",
        title="band: 95 % t interval of the mean over folds (within 0-1)",
        title_fontsize=7,
    )
    what = "selection strategies on identical folds"
    ax.set_title(f"{title}\n{what}" if title else what, fontsize=11)
    return figure


def compare_strategies(
    metrics_files: Sequence[str | os.PathLike],
    names: Sequence[str],
    metric: str,
    reference: str,
    out_dir: str | os.PathLike,
    *,
    title: str = "",
    dpi: int = 150,
    n_boot: int = 200,
) -> pd.DataFrame:
    """Write strategies.csv (images_to_reach) and strategies.png to out_dir; return the table."""
    if reference not in names:
        raise FewcellsError(f"reference {reference!r} is not one of {list(names)}")
    scores = common_pairs(read_metrics(metrics_files, names, metric))
    own = scores.loc[scores["experiment"] == reference, ["size", "fold", "score"]]
    fit = fit_learning_curve(own, n_boot=n_boot, plateau_fraction=PLATEAU_FRACTION)
    band = fold_band(scores)
    reach = images_to_reach(band, fit, names, reference)
    out_dir = Path(out_dir)
    write_csv(reach, out_dir / "strategies.csv")
    write_png(strategies_figure(band, reach, names, metric, title), out_dir / "strategies.png", dpi)
    return reach
