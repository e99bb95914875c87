"""The Markdown of an experiment's evaluation (summary.md): the per-size table, the
learning-curve fit in sentences, the class-wise table and what produced the numbers."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from fewcells.analysis.summary import PAPER_SATURATION_N
from fewcells.contracts import COLLAPSE_TOLERANCE, METRIC_LABELS, PROVENANCE_FIELDS


def mean_sd(mean: float, sd: float) -> str:
    """'mean ± sd' with three decimals; the mean alone where sd is not finite, '–' where the
    mean is not."""
    if not np.isfinite(mean):
        return "–"
    return f"{mean:.3f} ± {sd:.3f}" if np.isfinite(sd) else f"{mean:.3f}"


def series_mean_sd(values: pd.Series) -> str:
    """mean_sd of the values that are not NaN (the mean alone for one value)."""
    return mean_sd(values.mean(), values.std(ddof=1))


def classwise_markdown(summary: pd.DataFrame, size: int) -> list[str]:
    """Matek-style table (class, precision, sensitivity, images) of one training size."""
    table = summary[summary["size"] == size]

    def cell(row, name: str) -> str:
        pooled = getattr(row, name)
        text = "–" if not np.isfinite(pooled) else f"{pooled:.2f}"
        return f"{text} ({mean_sd(getattr(row, f'{name}_mean'), getattr(row, f'{name}_sd'))})"

    lines = [
        f"Class-wise precision and sensitivity at n = {size}: pooled over the folds' test "
        "predictions (in brackets mean ± s.d. over the folds where defined); images = test "
        "images of the class summed over folds.",
        "",
        "| class | precision | sensitivity | images |",
        "|---|---|---|---:|",
    ]
    for row in table.itertuples(index=False):
        lines.append(
            f"| {row.class_name} | {cell(row, 'precision')} | {cell(row, 'sensitivity')} | "
            f"{row.support} |"
        )
    return lines


def _n_ci_text(curve_fit: dict) -> str:
    low, high = curve_fit["n_at_fraction_ci"]
    if low is None and high is None:
        return ""
    largest = curve_fit["size_range"][1]
    if low is None:
        return f" (95% CI beyond the largest size, {largest})"
    return (
        f" (95% CI {low:.0f}–{high:.0f})" if high is not None else f" (95% CI {low:.0f}–>{largest})"
    )


def learning_curve_lines(curve_fit: dict, reference: str | None) -> list[str]:
    """The learning-curve fit in sentences: the fitted curve, where it reaches the plateau
    fraction (with its CI), the paper's saturation point and the bootstrap."""
    if not curve_fit["ok"]:
        return [f"Learning-curve fit failed: {curve_fit['reason']}."]
    percent = round(100 * curve_fit["plateau_fraction"])
    low, high = curve_fit["plateau_ci"]
    plateau_ci = f" (95% CI {low:.3f}–{high:.3f})" if low is not None and high is not None else ""
    at_bound = curve_fit["at_bound"]
    lines = [
        f"Learning curve {curve_fit['model']}: plateau a = {curve_fit['plateau']:.3f}"
        f"{plateau_ci}, b = {curve_fit['start']:.3f}, tau = {curve_fit['tau']:.1f} images"
        + (f" (at a bound: {', '.join(at_bound)})" if at_bound else "")
        + ".",
    ]
    n = curve_fit["n_at_fraction"]
    if n is None:
        lines.append(
            f"{percent}% of plateau not reached within the sizes run{_n_ci_text(curve_fit)}."
        )
    else:
        lines.append(f"{percent}% of plateau reached at n = {n}{_n_ci_text(curve_fit)}.")
        if n == curve_fit["size_range"][0]:
            lines.append("That is the smallest size run: the true n may be smaller.")
    if reference in PAPER_SATURATION_N:
        lines.append(f"Paper: the score saturates at about n = {PAPER_SATURATION_N[reference]}.")
    if curve_fit["note"]:
        lines.append(f"Note: {curve_fit['note']}.")
    lines.append(
        f"Bootstrap: {curve_fit['n_boot_ok']} of {curve_fit['n_boot']} resamples of the "
        f"{curve_fit['n_folds']} folds fitted."
    )
    return lines


def summary_markdown(
    summary: pd.DataFrame,
    curve_fit: dict,
    experiment_name: str,
    reference: str | None = None,
    extra_lines: Sequence[str] = (),
    *,
    curve_fit_without_collapsed: dict | None = None,
    provenance_lines: Sequence[str] = (),
) -> str:
    """Markdown report: per-size table (mean ± sd over folds, paper next to the main metric,
    networks and collapsed networks counted, the spread between seeds where there are
    replicates), the learning-curve lines ("95% of plateau reached at n = X (95% CI a–b)")
    with and without the collapsed networks, `extra_lines` (e.g. the class-wise table of a
    multiclass task) and `provenance_lines` (what produced the numbers)."""
    metric_names = [
        c[: -len("_mean")]
        for c in summary.columns
        if c.endswith("_mean") and c != "paper_mean" and "_without_collapsed" not in c
    ]
    main = metric_names[0]
    main_label = METRIC_LABELS.get(main, main)
    replicated = bool((summary["n_networks"] > summary["n_folds"]).any())
    collapsed = bool(summary["n_collapsed"].sum())
    headers = ["n (images)", "folds"]
    headers += ["networks"] if replicated else []
    headers += ["collapsed", main_label]
    headers += ["s.d. between seeds"] if replicated else []
    headers += [f"{main_label} without collapsed"] if collapsed else []
    headers += ["paper"] + [METRIC_LABELS.get(m, m) for m in metric_names[1:]]
    lines = [
        f"# {experiment_name}",
        "",
        "Test-fold metrics by training-set size n: mean ± s.d. over folds"
        + (" (each fold's replicates averaged first)" if replicated else "")
        + ". Collapsed: failed trainings, whose class probabilities vary by less than "
        f"{COLLAPSE_TOLERANCE:g} over all images (dead, or stuck at ln 2 from the start, so "
        "their ROC-AUC is 0.5 or noise); they are counted in the means.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" for _ in headers) + "|",
    ]
    for row in summary.itertuples(index=False):
        row = row._asdict()
        cells = [str(row["size"]), str(row["n_folds"])]
        cells += [str(row["n_networks"])] if replicated else []
        cells += [str(row["n_collapsed"]), mean_sd(row[f"{main}_mean"], row[f"{main}_sd"])]
        if replicated:
            seed_sd = row[f"{main}_seed_sd"]
            cells.append(f"{seed_sd:.3f}" if np.isfinite(seed_sd) else "–")
        if collapsed:
            cells.append(
                mean_sd(row[f"{main}_without_collapsed_mean"], row[f"{main}_without_collapsed_sd"])
            )
        cells.append(mean_sd(row["paper_mean"], row["paper_sd"]))
        cells += [mean_sd(row[f"{m}_mean"], row[f"{m}_sd"]) for m in metric_names[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", *learning_curve_lines(curve_fit, reference), ""]
    if curve_fit_without_collapsed is not None and collapsed:
        lines += [
            "Without the collapsed networks:",
            "",
            *learning_curve_lines(curve_fit_without_collapsed, None),
            "",
        ]
    if extra_lines:
        lines += [*extra_lines, ""]
    if provenance_lines:
        lines += ["## Produced by", "", *provenance_lines, ""]
    return "\n".join(lines)


def provenance_lines(infos: Sequence[dict], evaluation: dict) -> list[str]:
    """Markdown lines saying what produced the trainings (each distinct value of the
    PROVENANCE_FIELDS with its number of networks; "unknown" where a train_info.json
    predates the field) and the evaluation."""
    lines = []
    for field in PROVENANCE_FIELDS:
        counts = pd.Series([str(info.get(field, "unknown")) for info in infos]).value_counts()
        values = "; ".join(
            f"{value} ({count} networks)" if len(counts) > 1 else value
            for value, count in counts.items()
        )
        lines.append(f"- trainings' {field.replace('_', ' ')}: {values or 'unknown'}")
    lines.append(
        "- evaluation: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in evaluation.items())
    )
    return lines
