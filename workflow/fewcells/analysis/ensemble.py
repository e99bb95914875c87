"""Soft-voting ensembles of experiments trained on identical folds.

For each (size, fold) that every member trained, the ensemble's class probabilities of a
test image are the mean of the members' probabilities (soft voting). The ensemble and the
members are scored with the same functions as an experiment's evaluation
(`fewcells.analysis.metrics.task_metrics`) on the same test images, and
per size the ensemble is tested against the member with the best mean score with the
paired Wilcoxon signed-rank test of `fewcells.analysis.compare`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fewcells.analysis.compare import comparison_figure, wilcoxon_table
from fewcells.analysis.metrics import task_metrics
from fewcells.analysis.readers import read_predictions
from fewcells.analysis.report import mean_sd
from fewcells.analysis.summary import summarize
from fewcells.atomic import write_csv, write_png, write_text
from fewcells.contracts import MAIN_METRIC, METRIC_LABELS, PREDICTION_COLUMNS, SCORES, read_classes
from fewcells.errors import FewcellsError

ENSEMBLE = "ensemble"


def _test_table(pred: pd.DataFrame, name: str) -> pd.DataFrame:
    """The test rows of the first network of each (size, fold), indexed by size, fold, image."""
    test = pred[pred["split"] == "test"]
    if "replicate" in test.columns:
        test = test[test["replicate"] == 0].drop(columns="replicate")
    if test.duplicated(["size", "fold", "image_id"]).any():
        raise FewcellsError(f"{name}: an image appears twice in one test fold")
    return test.set_index(["size", "fold", "image_id"]).sort_index()


def soft_vote(predictions: Mapping[str, pd.DataFrame], class_names: Sequence[str]) -> pd.DataFrame:
    """Mean class probabilities of the members' test images, per (size, fold) that every
    member has; same columns as predictions.csv (split = test).

    The members must agree on each (size, fold)'s test images and their targets (identical
    folds); anything else is an error naming the first member that differs.
    """
    if len(predictions) < 2:
        raise FewcellsError(f"an ensemble needs 2 or more members, got {list(predictions)}")
    probability = [f"p_{name}" for name in class_names]
    tables = {name: _test_table(pred, name) for name, pred in predictions.items()}
    pairs = None
    for table in tables.values():
        jobs = set(table.index.droplevel("image_id").unique())
        pairs = jobs if pairs is None else pairs & jobs
    if not pairs:
        raise FewcellsError(f"the members {list(predictions)} share no (size, fold)")
    (first, reference), *others = tables.items()
    keep = reference.index.droplevel("image_id").isin(list(pairs))
    reference = reference[keep]
    total = reference[probability].to_numpy(dtype=float).copy()
    for name, table in others:
        table = table[table.index.droplevel("image_id").isin(list(pairs))]
        if not table.index.equals(reference.index):
            raise FewcellsError(
                f"{name!r} and {first!r} have different test images in the same (size, fold): "
                "an ensemble needs experiments trained on identical folds"
            )
        if not np.array_equal(table["target"].to_numpy(), reference["target"].to_numpy()):
            raise FewcellsError(f"{name!r} and {first!r} give test images different targets")
        total += table[probability].to_numpy(dtype=float)
    voted = reference[["target", "split"]].copy()
    voted[probability] = total / len(tables)
    return voted.reset_index().assign(replicate=0)[PREDICTION_COLUMNS + probability]


def model_metrics(
    predictions: Mapping[str, pd.DataFrame], class_names: Sequence[str], task: str
) -> pd.DataFrame:
    """Per model (each member, then the ensemble), size and fold: the task's test metrics,
    on the (size, fold) pairs that every member has."""
    voted = soft_vote(predictions, class_names)
    pairs = voted[["size", "fold"]].drop_duplicates()
    frames = []
    for name, pred in [*predictions.items(), (ENSEMBLE, voted)]:
        pred = pred.merge(pairs, on=["size", "fold"])
        frames.append(task_metrics(pred, class_names, task).assign(model=name))
    table = pd.concat(frames, ignore_index=True)
    return table[["model", *[c for c in table.columns if c != "model"]]]


def model_summary(metrics: pd.DataFrame, task: str) -> pd.DataFrame:
    """Per model and size: folds, mean and sd of every metric (summary.summarize)."""
    frames = [
        summarize(group.drop(columns="model"), task, None)
        .drop(columns=["paper_mean", "paper_sd"])
        .assign(model=name)
        for name, group in metrics.groupby("model", sort=False)
    ]
    table = pd.concat(frames, ignore_index=True).sort_values("size", kind="stable")
    return table[["model", *[c for c in table.columns if c != "model"]]].reset_index(drop=True)


def _scores(metrics: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The long table of fewcells.analysis.compare: experiment, size, fold, score."""
    return pd.DataFrame(
        {
            "experiment": metrics["model"],
            "size": metrics["size"].astype(int),
            "fold": metrics["fold"].astype(int),
            "score": metrics[metric].astype(float),
        }
    )


def best_member_tests(metrics: pd.DataFrame, members: Sequence[str], metric: str) -> pd.DataFrame:
    """Per size: the member with the highest mean score (first in order on ties) and the
    paired Wilcoxon test ensemble vs that member (compare.wilcoxon_table; a = ensemble)."""
    scores = _scores(metrics, metric)
    frames = []
    for _, block in scores.groupby("size", sort=True):
        means = block[block["experiment"].isin(members)].groupby("experiment")["score"].mean()
        means = means.reindex(list(members)).dropna()
        if means.empty:
            continue
        best = means.idxmax()
        tests = wilcoxon_table(block[block["experiment"].isin([ENSEMBLE, best])], [ENSEMBLE, best])
        frames.append(tests.assign(best_member_mean=means[best]))
    return pd.concat(frames, ignore_index=True)


def ensemble_markdown(
    summary: pd.DataFrame, tests: pd.DataFrame, metric: str, members: Sequence[str], title: str
) -> str:
    label = METRIC_LABELS.get(metric, metric)
    lines = [
        f"# Soft-voting ensemble {title}: {label}",
        "",
        f"Members: {', '.join(members)}. The ensemble's class probabilities are the mean of "
        "the members' on the same test images; only the (size, fold) pairs present in every "
        "member are used. Test-fold scores, mean ± s.d. over folds.",
        "",
        f"| n (images) | model | folds | {label} |",
        "|---:|---|---:|---|",
    ]
    for row in summary.itertuples(index=False):
        row = row._asdict()
        lines.append(
            f"| {row['size']} | {row['model']} | {row['n_folds']} | "
            f"{mean_sd(row[f'{metric}_mean'], row[f'{metric}_sd'])} |"
        )
    lines += [
        "",
        "Ensemble vs the best member at each size (highest mean on these same folds, so the "
        "choice favours the member), paired two-sided Wilcoxon signed-rank test over folds:",
        "",
        "| n (images) | best member | pairs | mean difference (ensemble - member) | p |",
        "|---:|---|---:|---:|---|",
    ]
    for row in tests.itertuples(index=False):
        p = row.note if row.note else f"{row.p_value:.4f}"
        difference = "–" if math.isnan(row.mean_difference) else f"{row.mean_difference:+.3f}"
        lines.append(f"| {row.size} | {row.experiment_b} | {row.n_pairs} | {difference} | {p} |")
    lines += [
        "",
        "With n folds differing the exact two-sided test cannot give p below 2 / 2^n: "
        "0.0625 with 5 folds, 0.0039 with 10.",
        "",
    ]
    return "\n".join(lines)


def ensemble_experiments(
    members: Mapping[str, Sequence[str | os.PathLike]],
    classes_json: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    metric: str | None = None,
    title: str = "",
    dpi: int = 150,
) -> None:
    """Soft-vote the members' predictions.csv files (member name -> its files) and write
    ensemble_predictions.csv (the averaged test probabilities), ensemble_metrics.csv (per
    model, size and fold), ensemble_summary.csv (per model and size, mean and sd),
    ensemble_wilcoxon.csv (ensemble vs best member per size), ensemble.md and ensemble.png
    (`metric`, default the task's main one, vs training size for every model)."""
    names = list(members)
    if ENSEMBLE in names:
        raise FewcellsError(f"a member may not be called {ENSEMBLE!r}")
    class_names, task = read_classes(classes_json)
    metric = metric or MAIN_METRIC[task]
    if metric not in SCORES[task]:
        raise FewcellsError(f"{metric!r} is not a {task} metric (one of {list(SCORES[task])})")
    predictions = {name: read_predictions(files, class_names) for name, files in members.items()}
    voted = soft_vote(predictions, class_names)
    metrics = model_metrics(predictions, class_names, task)
    summary = model_summary(metrics, task)
    tests = best_member_tests(metrics, names, metric)
    scores = _scores(metrics, metric)
    label = f"soft-voting ensemble of {len(names)}"
    figure = comparison_figure(
        scores,
        [*names, ENSEMBLE],
        metric,
        title=f"{title}: members and their ensemble" if title else "members and their ensemble",
        labels={ENSEMBLE: label},
        emphasis=ENSEMBLE,
    )
    out_dir = Path(out_dir)
    write_csv(voted, out_dir / "ensemble_predictions.csv")
    write_csv(metrics, out_dir / "ensemble_metrics.csv")
    write_csv(summary, out_dir / "ensemble_summary.csv")
    write_csv(tests, out_dir / "ensemble_wilcoxon.csv")
    write_text(ensemble_markdown(summary, tests, metric, names, title), out_dir / "ensemble.md")
    write_png(figure, out_dir / "ensemble.png", dpi)
