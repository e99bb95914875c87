"""Figures of a training-size sweep, one function per figure, each returning a Figure.

Figures are built with `matplotlib.figure.Figure` directly (no pyplot, no GUI backend,
no global figure registry); PNG output renders through Agg. Saving is the caller's job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from fewcells.analysis.metrics import fold_scores
from fewcells.contracts import METRIC_LABELS

TRAIN_COLOUR, VAL_COLOUR, FIT_COLOUR, PAPER_COLOUR = "tab:blue", "tab:orange", "tab:red", "black"
COLLAPSED_COLOUR = "tab:red"


def spread_sizes(sizes: Sequence[int], count: int = 4) -> list[int]:
    """Up to `count` sizes spread evenly (by rank) from the smallest to the largest."""
    ordered = sorted(set(sizes))
    picks = np.linspace(0, len(ordered) - 1, min(count, len(ordered))).round().astype(int)
    return [ordered[i] for i in dict.fromkeys(picks)]


def _title(experiment: str, what: str) -> str:
    """Experiment name above what the figure shows (two lines keep narrow figures unclipped)."""
    return f"{experiment}\n{what}" if experiment else what


def _fold_count_text(counts: pd.Series) -> str:
    low, high = int(counts.min()), int(counts.max())
    return f"{high} folds per size" if low == high else f"{low}–{high} folds per size"


def _networks(metrics: pd.DataFrame, score: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The networks with a finite `score`, split into working and collapsed ones."""
    finite = metrics[np.isfinite(metrics[score].to_numpy(dtype=float))]
    collapsed = (
        finite["collapsed"].astype(bool)
        if "collapsed" in finite
        else pd.Series(False, index=finite.index)
    )
    return finite[~collapsed], finite[collapsed]


def _network_points_label(metrics: pd.DataFrame) -> str:
    """'single folds', or 'single networks' when some fold has several replicates."""
    replicated = "replicate" in metrics and (metrics["replicate"] > 0).any()
    return "single networks" if replicated else "single folds"


def loss_curves(
    history: pd.DataFrame, sizes: Sequence[int] | None = None, *, experiment: str = ""
) -> Figure:
    """Train and validation loss vs epoch, one panel per size (paper Fig. 3a).

    Thin lines: folds; thick lines: mean over the folds still training at that epoch;
    dots: each fold's best epoch (lowest validation loss, the checkpoint that is tested; for
    a fine-tuned training, with a `phase` column, the best epoch of its last phase).
    """
    sizes = spread_sizes(history["size"].unique()) if sizes is None else list(sizes)
    figure = Figure(figsize=(3.6 * len(sizes) + 0.8, 3.8), layout="constrained")
    axes = figure.subplots(1, len(sizes), sharey=True, squeeze=False)[0]
    for ax, size in zip(axes, sizes, strict=True):
        runs = history[history["size"] == size]
        for _, run in runs.groupby("fold"):
            run = run.sort_values("epoch")
            ax.plot(run["epoch"], run["train_loss"], color=TRAIN_COLOUR, lw=0.6, alpha=0.35)
            ax.plot(run["epoch"], run["val_loss"], color=VAL_COLOUR, lw=0.6, alpha=0.35)
            if "phase" in run and run["phase"].notna().any():
                checkpointed = run[run["phase"] == run["phase"].dropna().iloc[-1]]
            else:
                checkpointed = run
            if checkpointed["val_loss"].notna().any():
                best = checkpointed.loc[checkpointed["val_loss"].idxmin()]
                ax.plot(
                    best["epoch"],
                    best["val_loss"],
                    "o",
                    color=VAL_COLOUR,
                    ms=4,
                    mec="black",
                    mew=0.5,
                )
        means = runs.groupby("epoch")[["train_loss", "val_loss"]].mean()
        ax.plot(means.index, means["train_loss"], color=TRAIN_COLOUR, lw=2)
        ax.plot(means.index, means["val_loss"], color=VAL_COLOUR, lw=2)
        ax.set_title(f"n = {size} images ({runs['fold'].nunique()} folds)", fontsize=10)
        ax.set_xlabel("Epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("Cross-entropy loss")
    axes[0].set_ylim(bottom=0)
    handles = [
        Line2D([], [], color=TRAIN_COLOUR, lw=2, label="training loss (mean)"),
        Line2D([], [], color=VAL_COLOUR, lw=2, label="validation loss (mean)"),
        Line2D([], [], color="grey", lw=0.6, label="single folds"),
        Line2D(
            [], [], marker="o", ls="", color=VAL_COLOUR, mec="black", label="best epoch of a fold"
        ),
    ]
    figure.legend(handles=handles, fontsize=9, loc="outside lower center", ncols=len(handles))
    figure.suptitle(f"{experiment}: loss during training" if experiment else "loss during training")
    return figure


def roc_curves(mean_roc_by_size: pd.DataFrame, *, experiment: str = "") -> Figure:
    """Mean test ROC curve with a ±1 s.d. band per size, chance diagonal (paper Fig. 3b).

    Input: rows of `metrics.mean_roc` for a few sizes (columns size, fpr, tpr_mean,
    tpr_lower, tpr_upper, n_folds, auc_mean, auc_sd).
    """
    figure = Figure(figsize=(5.6, 5.4), layout="constrained")
    ax = figure.subplots()
    _draw_mean_roc(ax, mean_roc_by_size)
    ax.set_title(_title(experiment, "mean test ROC by training size n"), fontsize=11)
    return figure


def merged_roc_curves(
    mean_roc_by_group: pd.DataFrame, groups: Mapping[str, Sequence[str]], *, experiment: str = ""
) -> Figure:
    """One panel per merged group: mean test ROC of "in the group" vs P_group (the sum of
    the group's class probabilities) per size, ±1 s.d. band (rows of
    `merged_classes.merged_roc`)."""
    names = [name for name in groups if name in set(mean_roc_by_group["group"])]
    figure = Figure(figsize=(5.2 * max(len(names), 1), 5.6), layout="constrained")
    axes = figure.subplots(1, max(len(names), 1), squeeze=False)[0]
    for ax, name in zip(axes, names, strict=False):
        _draw_mean_roc(ax, mean_roc_by_group[mean_roc_by_group["group"] == name])
        members = list(groups[name])
        lines = [" + ".join(members[i : i + 3]) for i in range(0, len(members), 3)]
        ax.set_title(f"P_{name} = " + "\n+ ".join(lines), fontsize=9)
    figure.suptitle(_title(experiment, "merged classes: mean test ROC by training size n"))
    return figure


def _draw_mean_roc(ax, mean_roc_by_size: pd.DataFrame) -> None:
    sizes = sorted(mean_roc_by_size["size"].unique())
    colours = colormaps["viridis"](np.linspace(0.0, 0.85, max(len(sizes), 1)))
    for colour, size in zip(colours, sizes, strict=True):
        curve = mean_roc_by_size[mean_roc_by_size["size"] == size].sort_values("fpr")
        first = curve.iloc[0]
        label = (
            f"n = {size}: AUC {first['auc_mean']:.3f} ± {first['auc_sd']:.3f} "
            f"({int(first['n_folds'])} folds)"
        )
        ax.fill_between(
            curve["fpr"], curve["tpr_lower"], curve["tpr_upper"], color=colour, alpha=0.15, lw=0
        )
        ax.plot(curve["fpr"], curve["tpr_mean"], color=colour, lw=2, label=label)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False-positive rate (1 − specificity)")
    ax.set_ylabel("True-positive rate (sensitivity)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, title="mean ± 1 s.d. over folds", title_fontsize=8)


def score_boxplot(
    metrics: pd.DataFrame,
    score: str = "roc_auc",
    *,
    paper: Mapping[int, tuple[float, float]] | None = None,
    experiment: str = "",
) -> Figure:
    """Box plot of the per-fold test score vs training size (each fold's replicates averaged
    first), single networks overlaid, collapsed networks (constant output) as red crosses
    (paper Fig. 4a/6); `paper` maps size -> (mean, sd) drawn as mean ± s.d. where the paper
    reports one."""
    sizes = sorted(metrics["size"].unique())
    fold_means = fold_scores(metrics, score)
    values = [fold_means.loc[fold_means["size"] == s, "score"].to_numpy() for s in sizes]
    positions = np.arange(len(sizes))
    figure = Figure(figsize=(max(5.0, 0.45 * len(sizes) + 2.5), 4.2), layout="constrained")
    ax = figure.subplots()
    ax.boxplot(
        values, positions=positions, widths=0.6, showfliers=False, medianprops={"color": "tab:blue"}
    )
    jitter = np.random.default_rng(0)
    working, collapsed = _networks(metrics, score)
    for points, marker, colour, size in (
        (working, "o", "grey", 4),
        (collapsed, "x", COLLAPSED_COLOUR, 8),
    ):
        where = np.searchsorted(sizes, points["size"].to_numpy())
        offsets = jitter.uniform(-0.15, 0.15, len(points))
        ax.plot(where + offsets, points[score], marker, ms=size, mew=2, color=colour, zorder=3)
    handles = [
        Line2D([], [], marker="o", ls="", color="grey", ms=3, label=_network_points_label(metrics))
    ]
    if len(collapsed):
        handles.append(
            Line2D(
                [],
                [],
                marker="x",
                ls="",
                color=COLLAPSED_COLOUR,
                label=f"collapsed: constant output ({len(collapsed)})",
            )
        )
    for size, (mean, sd) in (paper or {}).items():
        if size in sizes:
            ax.errorbar(
                sizes.index(size) + 0.3, mean, yerr=sd, fmt="D", color=PAPER_COLOUR, ms=5, capsize=3
            )
    if paper and any(size in sizes for size in paper):
        handles.append(
            Line2D([], [], marker="D", ls="", color=PAPER_COLOUR, label="paper (mean ± s.d.)")
        )
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xticks(positions, [str(s) for s in sizes], rotation=45 if len(sizes) > 10 else 0)
    counts = fold_means.groupby("size")["score"].count().reindex(sizes, fill_value=0)
    ax.set_xlabel(f"Training-set size n (images; {_fold_count_text(counts)})")
    ax.set_ylabel(f"{METRIC_LABELS.get(score, score)} on the test fold")
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(
        _title(experiment, f"{METRIC_LABELS.get(score, score)} vs training size"), fontsize=11
    )
    return figure


def spread_folds_seeds(metrics: pd.DataFrame, score: str, *, experiment: str = "") -> Figure:
    """At each size with replicates: the s.d. of the score between folds (of the per-fold
    means) beside the s.d. between seeds on one fold (averaged over the folds)."""
    label = METRIC_LABELS.get(score, score)
    replicated = metrics.groupby("size")["replicate"].max()
    sizes = sorted(replicated[replicated > 0].index)
    between_folds = fold_scores(metrics, score).groupby("size")["score"].std(ddof=1)
    between_seeds = metrics.groupby(["size", "fold"])[score].std(ddof=1).groupby("size").mean()
    replicates = metrics.groupby(["size", "fold"])["replicate"].count().groupby("size").max()
    figure = Figure(figsize=(max(4.5, 1.1 * len(sizes) + 2.5), 3.8), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(sizes))
    ax.bar(
        positions - 0.2,
        between_folds.reindex(sizes),
        0.4,
        color=TRAIN_COLOUR,
        label="between folds (s.d. of the per-fold means)",
    )
    ax.bar(
        positions + 0.2,
        between_seeds.reindex(sizes),
        0.4,
        color=VAL_COLOUR,
        label="between seeds on one fold (mean s.d.)",
    )
    ax.set_xticks(positions, [f"{s}\n({int(replicates[s])} seeds)" for s in sizes], fontsize=9)
    ax.set_xlabel("Training-set size n (images)")
    ax.set_ylabel(f"s.d. of the test {label}")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(_title(experiment, f"where the spread of {label} comes from"), fontsize=11)
    return figure


def learning_curve(
    metrics: pd.DataFrame, fit: dict, *, score: str = "roc_auc", experiment: str = ""
) -> Figure:
    """Single networks' scores (collapsed ones as red crosses), the mean over folds, the
    fitted saturating curve with its bootstrap band, the plateau and the size reaching the
    plateau fraction with its 95% CI."""
    label = METRIC_LABELS.get(score, score)
    figure = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = figure.subplots()
    working, collapsed = _networks(metrics, score)
    ax.plot(
        working["size"],
        working[score],
        "o",
        ms=3,
        color="grey",
        alpha=0.5,
        mew=0,
        label=_network_points_label(metrics),
    )
    if len(collapsed):
        ax.plot(
            collapsed["size"],
            collapsed[score],
            "x",
            ms=5,
            color=COLLAPSED_COLOUR,
            label=f"collapsed: constant output ({len(collapsed)})",
        )
    sizes = sorted(metrics["size"].unique())
    fold_means = fold_scores(metrics, score).groupby("size")["score"]
    means = fold_means.mean().reindex(sizes)
    ax.plot(means.index, means.to_numpy(), "s-", color="black", ms=4, lw=1, label="mean over folds")
    _draw_fit(ax, fit)
    fold_counts = _fold_count_text(fold_means.count().reindex(sizes, fill_value=0))
    ax.set_xlabel(f"Training-set size n (images; {fold_counts})")
    ax.set_ylabel(f"{label} on the test fold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(
        _title(experiment, f"learning curve ({label}), shaded: 95% bootstrap CI"), fontsize=11
    )
    return figure


def _draw_fit(ax, fit: dict) -> None:
    """The fitted learning curve with its bootstrap band, the plateau and the size reaching
    the plateau fraction with its 95% CI (or why the fit failed)."""
    if fit["ok"]:
        curve = fit["curve"]
        ax.plot(
            curve["size"],
            curve["fitted_score"],
            color=FIT_COLOUR,
            lw=2,
            label=f"fit: {fit['model']}",
        )
        if curve["fitted_lower"].notna().any():
            ax.fill_between(
                curve["size"],
                curve["fitted_lower"],
                curve["fitted_upper"],
                color=FIT_COLOUR,
                alpha=0.15,
                lw=0,
            )
        low, high = fit["plateau_ci"]
        plateau_ci = f" (95% CI {low:.3f}–{high:.3f})" if None not in (low, high) else ""
        ax.axhline(
            fit["plateau"],
            color=FIT_COLOUR,
            ls="--",
            lw=1,
            label=f"plateau a = {fit['plateau']:.3f}{plateau_ci}",
        )
        percent = round(100 * fit["plateau_fraction"])
        n = fit["n_at_fraction"]
        n_lo, n_hi = fit["n_at_fraction_ci"]
        if n is not None:
            ci = ""
            if n_lo is not None:
                right = n_hi if n_hi is not None else fit["size_range"][1]
                ax.axvspan(n_lo, right, color="tab:green", alpha=0.12, lw=0)
                ci = f" (95% CI {n_lo:.0f}–{'>' if n_hi is None else ''}{right:.0f})"
            ax.axvline(n, color="tab:green", lw=1.5, label=f"{percent}% of plateau at n = {n}{ci}")
        else:
            ax.plot([], [], " ", label=f"{percent}% of plateau not reached within the sizes run")
    else:
        ax.text(
            0.5,
            0.1,
            f"fit failed: {fit['reason']}",
            transform=ax.transAxes,
            ha="center",
            color=FIT_COLOUR,
        )


def confusion_matrix(
    cm_percent: pd.DataFrame | np.ndarray,
    cm_counts: pd.DataFrame | np.ndarray,
    class_names: Sequence[str],
    *,
    experiment: str = "",
) -> Figure:
    """Confusion matrix (rows = true class): percent of the true class, counts below
    (paper Fig. 7b). Both inputs are square, in `class_names` order."""
    percent = np.asarray(cm_percent, dtype=float)
    counts = np.asarray(cm_counts, dtype=float).astype(int)
    size = max(4.5, 0.9 * len(class_names) + 2.5)
    figure = Figure(figsize=(size + 1.0, size), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(np.nan_to_num(percent), cmap="Blues", vmin=0, vmax=100)
    for row in range(len(class_names)):
        for column in range(len(class_names)):
            value = percent[row, column]
            text = "–" if np.isnan(value) else f"{value:.0f}%\n({counts[row, column]})"
            colour = "white" if value > 60 else "black"
            ax.text(column, row, text, ha="center", va="center", fontsize=8, color=colour)
    totals = counts.sum(axis=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(
        range(len(class_names)), [f"{c} ({t})" for c, t in zip(class_names, totals, strict=True)]
    )
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class (test images, all folds)")
    figure.colorbar(image, ax=ax, label="% of the true class", shrink=0.8)
    ax.set_title(_title(experiment, "test confusion matrix"), fontsize=11)
    return figure
