"""Merged classes of a multiclass experiment (Matek et al. 2019: P_blast, P_atypical).

A group of classes gets the probability P_group = the sum of its classes' probabilities;
"is the image in the group" is then a two-class problem scored with the binary metrics of
`fewcells.analysis.evaluate` (ROC-AUC, and sensitivity/specificity at P_group >= 0.5 and at the
Youden threshold) per (size, fold), and its mean ROC curve per size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from fewcells.analysis import plots
from fewcells.analysis.metrics import binary_metrics, mean_roc, with_replicate
from fewcells.analysis.readers import read_predictions
from fewcells.analysis.report import mean_sd
from fewcells.analysis.summary import summarize
from fewcells.atomic import write_csv, write_png, write_text
from fewcells.config import check_merged_groups
from fewcells.contracts import PREDICTION_COLUMNS, read_classes
from fewcells.errors import FewcellsError

# Column names of the two-class table of one group (never a class name: no p_ prefix clash).
IN_GROUP, OUTSIDE = "in_group", "outside_group"


def group_predictions(
    pred: pd.DataFrame, class_names: Sequence[str], members: Sequence[str]
) -> pd.DataFrame:
    """Two-class predictions of "in the group": target 1 for an image of a member class,
    p_in_group = sum of the members' probabilities, p_outside_group = 1 - p_in_group."""
    unknown = [name for name in members if name not in class_names]
    if unknown:
        raise FewcellsError(f"unknown class(es) {unknown} (classes: {list(class_names)})")
    member_targets = [list(class_names).index(name) for name in members]
    merged = pred[[f"p_{name}" for name in members]].sum(axis=1).clip(0.0, 1.0)
    table = with_replicate(pred)[PREDICTION_COLUMNS].copy()
    table["target"] = pred["target"].isin(member_targets).astype(int)
    table[f"p_{OUTSIDE}"] = 1.0 - merged
    table[f"p_{IN_GROUP}"] = merged
    return table


def merged_metrics(
    pred: pd.DataFrame, class_names: Sequence[str], groups: Mapping[str, Sequence[str]]
) -> pd.DataFrame:
    """Per group, size and fold: the binary test metrics of P_group (n_positive = images in
    the group)."""
    frames = [
        binary_metrics(group_predictions(pred, class_names, members), IN_GROUP).assign(group=name)
        for name, members in groups.items()
    ]
    table = pd.concat(frames, ignore_index=True)
    return table[["group", *[c for c in table.columns if c != "group"]]]


def merged_summary(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per group and size: folds with a finite ROC-AUC, mean and sd of every binary metric."""
    frames = [
        summarize(group.drop(columns="group"), "binary", None)
        .drop(columns=["paper_mean", "paper_sd"])
        .assign(group=name)
        for name, group in metrics.groupby("group", sort=False)
    ]
    table = pd.concat(frames, ignore_index=True)
    return table[["group", *[c for c in table.columns if c != "group"]]]


def merged_roc(
    pred: pd.DataFrame,
    class_names: Sequence[str],
    groups: Mapping[str, Sequence[str]],
    metrics: pd.DataFrame,
) -> pd.DataFrame:
    """Mean test ROC curve (metrics.mean_roc) per group and size with a finite AUC."""
    frames = []
    for name, members in groups.items():
        table = group_predictions(pred, class_names, members)
        finite = metrics[(metrics["group"] == name) & metrics["roc_auc"].notna()]
        frames += [
            mean_roc(table, IN_GROUP, size).assign(group=name)
            for size in sorted(finite["size"].unique())
        ]
    if not frames:
        raise FewcellsError("no (size, fold) has images both in and outside a merged group")
    table = pd.concat(frames, ignore_index=True)
    return table[["group", *[c for c in table.columns if c != "group"]]]


def merged_markdown(
    summary: pd.DataFrame, groups: Mapping[str, Sequence[str]], experiment: str
) -> str:
    lines = [
        f"# {experiment}: merged classes",
        "",
        "P_group = sum of the group's class probabilities; ROC-AUC of \"the image belongs to "
        'the group" on the test folds, mean ± s.d. over folds; sensitivity and specificity '
        "at P_group >= 0.5.",
        "",
    ]
    lines += [f"- {name} = {' + '.join(members)}" for name, members in groups.items()]
    lines += [
        "",
        "| group | n (images) | folds | ROC-AUC | sensitivity | specificity |",
        "|---|---:|---:|---|---|---|",
    ]
    for row in summary.itertuples(index=False):
        lines.append(
            f"| {row.group} | {row.size} | {row.n_folds} | "
            f"{mean_sd(row.roc_auc_mean, row.roc_auc_sd)} | "
            f"{mean_sd(row.sensitivity_mean, row.sensitivity_sd)} | "
            f"{mean_sd(row.specificity_mean, row.specificity_sd)} |"
        )
    return "\n".join([*lines, ""])


def evaluate_merged(
    prediction_files: Sequence[str | os.PathLike],
    classes_json: str | os.PathLike,
    groups: Mapping[str, Sequence[str]],
    out_dir: str | os.PathLike,
    *,
    experiment: str,
    roc_sizes: Sequence[int] | None = None,
    dpi: int = 150,
) -> None:
    """Write merged_metrics.csv, merged_summary.csv, merged_roc.csv, merged.md and
    merged_roc.png (mean ROC per group for `roc_sizes`, default up to 4 spread sizes)."""
    if not groups:
        raise FewcellsError("no merged groups given (evaluate.merged)")
    class_names, task = read_classes(classes_json)
    if task != "multiclass":
        raise FewcellsError(f"{classes_json}: merged classes need a multiclass task, got {task}")
    check_merged_groups(dict(groups), class_names, f"experiments.{experiment}.evaluate.merged")
    pred = read_predictions(prediction_files, class_names)
    metrics = merged_metrics(pred, class_names, groups)
    summary = merged_summary(metrics)
    roc = merged_roc(pred, class_names, groups, metrics)
    sizes = sorted(roc["size"].unique().tolist())
    shown = plots.spread_sizes(sizes) if roc_sizes is None else sorted(set(roc_sizes) & set(sizes))
    out_dir = Path(out_dir)
    write_csv(metrics, out_dir / "merged_metrics.csv")
    write_csv(summary, out_dir / "merged_summary.csv")
    write_csv(roc, out_dir / "merged_roc.csv")
    write_text(merged_markdown(summary, groups, experiment), out_dir / "merged.md")
    figure = plots.merged_roc_curves(roc[roc["size"].isin(shown)], groups, experiment=experiment)
    write_png(figure, out_dir / "merged_roc.png", dpi)
