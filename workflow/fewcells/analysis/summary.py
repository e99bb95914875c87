"""The per-size summary of an experiment's networks, next to the numbers the paper reports."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import pandas as pd

from fewcells.analysis.metrics import fold_scores, with_replicate
from fewcells.contracts import BINARY_METRICS, MAIN_METRIC, MULTICLASS_METRICS
from fewcells.errors import FewcellsError

log = logging.getLogger(__name__)

# Mean and s.d. over 10 folds reported by Schouten et al. 2021, keyed by reference name.
# A dict maps training-set size -> (mean, sd); a bare tuple is the result of the full
# training set, compared with the largest size of our sweep.
PAPER_REFERENCE: dict[str, dict[int, tuple[float, float]] | tuple[float, float]] = {
    "all_binary": {200: (0.97, 0.02)},
    "aml_binary": {50: (0.91, 0.04), 200: (0.93, 0.02)},
    "all_multiclass_f1": (0.81, 0.09),
}
# The task each reference belongs to (its number is that task's main metric).
PAPER_REFERENCE_TASK = {
    "all_binary": "binary",
    "aml_binary": "binary",
    "all_multiclass_f1": "multiclass",
}
# Training-set size at which the paper saw the score saturate ("at about n = 30").
PAPER_SATURATION_N = {"all_binary": 30}


def paper_values(reference: str, task: str, sizes: Sequence[int]) -> dict[int, tuple[float, float]]:
    """The paper's (mean, sd) by training size for `reference`; a full-training-set number
    is placed at the largest size run. Unknown reference or wrong task -> FewcellsError."""
    if reference not in PAPER_REFERENCE:
        raise FewcellsError(
            f"unknown paper reference {reference!r}; known: {sorted(PAPER_REFERENCE)}"
        )
    if PAPER_REFERENCE_TASK[reference] != task:
        raise FewcellsError(
            f"paper reference {reference!r} is a {PAPER_REFERENCE_TASK[reference]} result, "
            f"but the experiment's task is {task!r}"
        )
    values = PAPER_REFERENCE[reference]
    if isinstance(values, tuple):
        return {int(max(sizes)): values} if len(sizes) else {}
    not_run = sorted(set(values) - set(sizes))
    if not_run:
        log.warning("paper reference %s: sizes %s were not run; not compared", reference, not_run)
    return dict(values)


def summarize(metrics: pd.DataFrame, task: str, reference: str | None) -> pd.DataFrame:
    """Per size, over folds (the replicates of a fold averaged first): n_folds (folds with a
    finite main metric), n_networks, n_collapsed, mean and sd over folds of every metric,
    main one first; for the main metric also seed_sd (the s.d. between the replicates of
    one fold, averaged over the folds that have two or more; NaN without replicates) and
    mean / sd without the collapsed networks; paper_mean / paper_sd where the paper reports
    a number for that size (else NaN)."""
    if task not in MAIN_METRIC:
        raise FewcellsError(f"task must be one of {sorted(MAIN_METRIC)}, got {task!r}")
    names = BINARY_METRICS if task == "binary" else MULTICLASS_METRICS
    main = MAIN_METRIC[task]
    metrics = with_replicate(metrics)
    if "collapsed" not in metrics.columns:
        metrics = metrics.assign(collapsed=False)
    sizes = sorted(metrics["size"].unique())
    per_fold = metrics.groupby(["size", "fold"], sort=True)[names].mean()
    over_folds = per_fold.groupby(level="size")
    networks = metrics.groupby("size")
    summary = pd.DataFrame({"size": sizes})
    summary["n_folds"] = over_folds[main].count().reindex(sizes).to_numpy()
    summary["n_networks"] = networks[main].count().reindex(sizes).to_numpy()
    summary["n_collapsed"] = networks["collapsed"].sum().reindex(sizes).astype(int).to_numpy()
    for name in names:
        summary[f"{name}_mean"] = over_folds[name].mean().reindex(sizes).to_numpy()
        summary[f"{name}_sd"] = over_folds[name].std(ddof=1).reindex(sizes).to_numpy()
    between_seeds = metrics.groupby(["size", "fold"])[main].std(ddof=1).groupby(level="size")
    summary[f"{main}_seed_sd"] = between_seeds.mean().reindex(sizes).to_numpy()
    clean = fold_scores(metrics, main, drop_collapsed=True).groupby("size")["score"]
    summary[f"{main}_without_collapsed_mean"] = clean.mean().reindex(sizes).to_numpy()
    summary[f"{main}_without_collapsed_sd"] = clean.std(ddof=1).reindex(sizes).to_numpy()
    paper = paper_values(reference, task, summary["size"].tolist()) if reference else {}
    summary["paper_mean"] = [paper.get(s, (math.nan, math.nan))[0] for s in summary["size"]]
    summary["paper_sd"] = [paper.get(s, (math.nan, math.nan))[1] for s in summary["size"]]
    return summary
