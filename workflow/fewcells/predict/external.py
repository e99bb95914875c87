"""External validation: the experiment's metrics on an image set from elsewhere, per
training size beside the same networks' internal test-fold numbers.

Each network and the ensemble are scored by the evaluation's own functions
(`evaluate.binary_metrics`, `multiclass_metrics`, `classwise_metrics`,
`confusion_matrix_table`). Binary tasks add sensitivity and specificity at each network's
validation-chosen threshold (the Youden threshold of its validation images, chosen before
any test image is seen; the ensemble takes the median of its networks' thresholds) and the
share of images called positive (on a set of negatives only: the false-positive rate).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fewcells.analysis import plots
from fewcells.analysis.metrics import (
    binary_metrics,
    classwise_metrics,
    confusion_matrix_square,
    confusion_matrix_table,
    multiclass_metrics,
    youden,
)
from fewcells.analysis.readers import read_predictions
from fewcells.analysis.report import series_mean_sd
from fewcells.atomic import write_png
from fewcells.contracts import BINARY_METRICS, METRIC_LABELS, MULTICLASS_METRICS

log = logging.getLogger(__name__)

ENSEMBLE_FOLD = -1  # the `fold` of the ensemble's rows in the evaluate-format tables
THRESHOLD_METRICS = ["val_threshold", "val_sensitivity", "val_specificity", "positive_rate"]
SHOWN = {
    "binary": [
        "roc_auc",
        "sensitivity",
        "specificity",
        "val_sensitivity",
        "val_specificity",
        "positive_rate",
        "accuracy",
    ],
    "multiclass": ["macro_f1", "accuracy", "balanced_accuracy"],
}


def _evaluation_rows(
    probabilities: np.ndarray, targets: np.ndarray, class_names: Sequence[str], **keys
) -> pd.DataFrame:
    """An evaluate-format predictions table (split test) of one network or the ensemble."""
    frame = pd.DataFrame(
        {
            "size": keys["size"],
            "fold": keys["fold"],
            "replicate": keys["replicate"],
            "image_id": keys["image_ids"],
            "target": targets,
            "split": "test",
        }
    )
    for column, name in enumerate(class_names):
        frame[f"p_{name}"] = probabilities[:, column]
    return frame


def _threshold_columns(frame: pd.DataFrame, threshold: float, positive: str) -> dict:
    """Sensitivity and specificity at `threshold`, the share called positive at 0.5."""
    positive_target = 1
    y_true = frame["target"].to_numpy() == positive_target
    score = frame[f"p_{positive}"].to_numpy(dtype=float)
    called = score >= threshold
    return {
        "val_threshold": threshold,
        "val_sensitivity": called[y_true].mean() if y_true.any() else math.nan,
        "val_specificity": (~called[~y_true]).mean() if (~y_true).any() else math.nan,
        "positive_rate": float((score >= 0.5).mean()) if len(score) else math.nan,
    }


def _validation_threshold(train_pred: pd.DataFrame, positive: str) -> float:
    val = train_pred[train_pred["split"] == "val"]
    y_true = (val["target"].to_numpy() == 1).astype(int)
    if y_true.min(initial=1) == y_true.max(initial=0):
        return 0.5
    return youden(y_true, val[f"p_{positive}"].to_numpy(dtype=float))[0]


def _score(pred: pd.DataFrame, class_names: Sequence[str], task: str) -> pd.DataFrame:
    if task == "binary":
        return binary_metrics(pred, class_names[1])
    return multiclass_metrics(pred, class_names)


def external_metrics(
    predictions: pd.DataFrame,
    networks: Sequence,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    task: str,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(metrics, the external evaluate-format rows): one metrics row per network and set
    (internal = its own test fold, external = the labelled images of the set), and one
    external row per training size for the ensemble (model 'ensemble', fold -1)."""
    labelled = predictions[predictions["size"] == predictions["size"].iloc[0]]
    has_class = labelled["class_name"].notna().to_numpy()
    targets = (
        labelled.loc[has_class, "class_name"].map({n: i for i, n in enumerate(class_names)})
    ).to_numpy(dtype=int)
    image_ids = labelled.loc[has_class, "image_id"].to_numpy()
    rows, external_rows = [], []
    thresholds: dict[int, list[float]] = {}
    for i, network in enumerate(networks):
        keys = {"size": network.size, "fold": network.fold, "replicate": network.replicate}
        train_pred = read_predictions([network.directory / "predictions.csv"], class_names)
        internal = _score(train_pred, class_names, task).assign(set="internal", model="network")
        outside = None
        if has_class.any():
            outside = _evaluation_rows(
                probabilities[i][has_class], targets, class_names, image_ids=image_ids, **keys
            )
            external_rows.append(outside)
            scored = _score(outside, class_names, task).assign(set="external", model="network")
        if task == "binary":
            threshold = _validation_threshold(train_pred, class_names[1])
            thresholds.setdefault(network.size, []).append(threshold)
            test = train_pred[train_pred["split"] == "test"]
            internal = internal.assign(**_threshold_columns(test, threshold, class_names[1]))
            if outside is not None:
                scored = scored.assign(**_threshold_columns(outside, threshold, class_names[1]))
        rows.append(internal)
        if outside is not None:
            rows.append(scored)
    if has_class.any():
        for size, group in predictions.groupby("size", sort=True):
            probs = group[[f"p_{n}" for n in class_names]].to_numpy(dtype=float)[has_class]
            voted = _evaluation_rows(
                probs,
                targets,
                class_names,
                image_ids=image_ids,
                size=size,
                fold=ENSEMBLE_FOLD,
                replicate=0,
            )
            external_rows.append(voted)
            scored = _score(voted, class_names, task).assign(set="external", model="ensemble")
            if task == "binary":
                threshold = float(np.median(thresholds[size]))
                scored = scored.assign(**_threshold_columns(voted, threshold, class_names[1]))
            rows.append(scored)
    metrics = pd.concat(rows, ignore_index=True)
    first = ["set", "model", "size", "fold", "replicate"]
    metrics = metrics[first + [c for c in metrics.columns if c not in first]]
    external = pd.concat(external_rows, ignore_index=True) if external_rows else pd.DataFrame()
    return metrics, external


def external_markdown(
    metrics: pd.DataFrame,
    predictions: pd.DataFrame,
    class_names: Sequence[str],
    task: str,
    *,
    experiment: str,
    name: str,
    classwise: pd.DataFrame | None = None,
) -> str:
    """external.md: per training size the internal and external metrics side by side."""
    first = predictions[predictions["size"] == predictions["size"].iloc[0]]
    n_labelled = int(first["class_name"].notna().sum())
    lines = [
        f"# {experiment}: external validation on {name}",
        "",
        f"{len(first)} images, {n_labelled} with a class of the experiment "
        + (
            "("
            + ", ".join(f"{c}: {n}" for c, n in first["class_name"].value_counts().items())
            + ")."
            if n_labelled
            else "- no external validation (the set has no labels of the experiment's classes)."
        ),
        "",
    ]
    columns = [m for m in SHOWN[task] if m in metrics.columns]
    for size, group in metrics.groupby("size", sort=True):
        internal = group[(group["set"] == "internal")]
        outside = group[(group["set"] == "external") & (group["model"] == "network")]
        voted = group[(group["set"] == "external") & (group["model"] == "ensemble")]
        lines += [
            f"## n = {size} ({len(internal)} network(s))",
            "",
            "| metric | internal (test folds) | external (per network) | external (ensemble) |",
            "|---|---|---|---|",
        ]
        for metric in columns:
            lines.append(
                f"| {METRIC_LABELS.get(metric, metric)} | {series_mean_sd(internal[metric])} | "
                f"{series_mean_sd(outside[metric])} | {series_mean_sd(voted[metric])} |"
            )
        lines.append("")
    lines += [
        "Internal: each network on its own test fold; external: the same networks on this set "
        "(mean ± s.d. over networks) and their soft-voting ensemble (mean probabilities).",
    ]
    if task == "binary":
        lines += [
            f"Positive class: {class_names[1]}. The validation threshold of a network is the "
            "Youden threshold of its validation images (the ensemble: the median of its "
            "networks'); 'share called positive' on a set without positives is the "
            "false-positive rate.",
        ]
    if classwise is not None and not classwise.empty:
        size = int(classwise["size"].max())
        table = classwise[classwise["size"] == size]
        lines += [
            "",
            f"## Class-wise, ensemble, n = {size}",
            "",
            "| class | precision | sensitivity | images |",
            "|---|---|---|---:|",
        ]
        for row in table.itertuples(index=False):
            precision = "–" if not np.isfinite(row.precision) else f"{row.precision:.2f}"
            recall = "–" if not np.isfinite(row.sensitivity) else f"{row.sensitivity:.2f}"
            lines.append(f"| {row.class_name} | {precision} | {recall} | {row.support} |")
    return "\n".join(lines) + "\n"


def _no_labels_figure():
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4, 2))
    figure.text(0.5, 0.5, "no labelled images:\nno external validation", ha="center")
    return figure


def write_external(
    predictions: pd.DataFrame,
    networks: Sequence,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    task: str,
    out_dir: Path,
    *,
    experiment: str,
    name: str,
    dpi: int = 150,
) -> dict:
    """external_metrics.csv, external.md and external_confusion.png (the ensemble's at the
    largest size; binary: at 0.5) into `out_dir`. Returns the ensemble's external metrics
    per size (empty without labels)."""
    metrics, external = external_metrics(predictions, networks, probabilities, class_names, task)
    classwise = None
    figure = _no_labels_figure()
    if not external.empty:
        voted = external[external["fold"] == ENSEMBLE_FOLD]
        size = int(voted["size"].max())
        if task == "multiclass":
            classwise = classwise_metrics(voted, class_names)
        table = confusion_matrix_table(voted, class_names, size)
        figure = plots.confusion_matrix(
            confusion_matrix_square(table, "percent", class_names),
            confusion_matrix_square(table, "count", class_names),
            class_names,
            experiment=f"{experiment} on {name}, ensemble n = {size}",
        )
    metrics.to_csv(out_dir / "external_metrics.csv", index=False)
    text = external_markdown(
        metrics,
        predictions,
        class_names,
        task,
        experiment=experiment,
        name=name,
        classwise=classwise,
    )
    (out_dir / "external.md").write_text(text)
    write_png(figure, out_dir / "external_confusion.png", dpi)
    columns = [c for c in [*BINARY_METRICS, *MULTICLASS_METRICS, *THRESHOLD_METRICS]]
    voted = metrics[(metrics["set"] == "external") & (metrics["model"] == "ensemble")]
    return {
        str(int(row["size"])): {c: _plain(row[c]) for c in columns if c in voted.columns}
        for _, row in voted.iterrows()
    }


def _plain(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
