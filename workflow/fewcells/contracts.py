"""What each file holds: the columns of the tables one stage writes and the next reads, the
classes.json reader, the metric names, and what a collapsed network is.

This is the one place these are written down; the stages import them from here. The module
is light on purpose (no torch, no plotting): the config validation that Snakemake runs at
start-up reads the metric names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fewcells.errors import FewcellsError

# ----------------------------------------------------------------------------- data stage

# manifest.csv and dedup's kept.csv: one row per image (a labels table's other columns follow).
MANIFEST_COLUMNS = ["image_id", "path", "label", "width", "height", "mode", "sha256"]
# dedup's pairs.csv: one row per candidate pair of near-duplicate images.
PAIR_COLUMNS = [
    "image_a",
    "image_b",
    "hash_distance",
    "shift_y",
    "shift_x",
    "overlap",
    "correlation",
    "highpass_correlation",
    "mean_abs_diff",
    "confirmed",
    "label_a",
    "label_b",
    "label_conflict",
]
# folds.csv (and a pretraining's split.csv, with fold 0): one row per image and fold; role is
# test, val or pool, rank the image's place in the pool's training order (-1 outside it).
FOLD_COLUMNS = ["fold", "image_id", "label", "target", "class_name", "role", "rank"]
# The tensor store's index.csv: row `row` of images.npy holds image `image_id`.
INDEX_COLUMNS = ["row", "image_id", "label"]

# ------------------------------------------------------------------------- training stage

# One trained network: training size, fold and replicate (another seed on the same fold).
RUN_KEYS = ["size", "fold", "replicate"]
# history.csv of a training: one row per epoch (a fine-tuned training adds `phase`).
HISTORY_COLUMNS = [
    "fold",
    "size",
    "replicate",
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "lr",
]
# predictions.csv of a training: its test and validation images, then one p_<class> column
# per class in target order.
PREDICTION_COLUMNS = ["fold", "size", "replicate", "image_id", "target", "split"]
# embeddings.npz of a training: every image of the fold, its role and its hidden layer.
EMBEDDING_KEYS = ("image_id", "role", "target", "embedding")
# train_info.json fields that say what produced a training.
PROVENANCE_FIELDS = (
    "fewcells_version",
    "git_commit",
    "torch_version",
    "device",
    "cpu_kernel",
    "cpu",
)

# ------------------------------------------------------------------------- analysis stage

# The per-network metrics in metrics.csv, by task; the main one decides the learning curve.
MAIN_METRIC = {"binary": "roc_auc", "multiclass": "macro_f1"}
BINARY_METRICS = [
    "roc_auc",
    "sensitivity",
    "specificity",
    "youden_threshold",
    "youden_sensitivity",
    "youden_specificity",
    "accuracy",
    "f1",
]
MULTICLASS_METRICS = ["macro_f1", "accuracy", "balanced_accuracy"]
# Scores that experiments can be compared by (the Youden threshold is a cut-off, not a score).
SCORES = {
    "binary": tuple(m for m in BINARY_METRICS if m != "youden_threshold"),
    "multiclass": tuple(MULTICLASS_METRICS),
}
# How tables and figures name the metrics.
METRIC_LABELS = {
    "roc_auc": "ROC-AUC",
    "sensitivity": "Sensitivity (p ≥ 0.5)",
    "specificity": "Specificity (p ≥ 0.5)",
    "youden_threshold": "Youden threshold",
    "youden_sensitivity": "Sensitivity (Youden)",
    "youden_specificity": "Specificity (Youden)",
    "val_sensitivity": "Sensitivity (validation threshold)",
    "val_specificity": "Specificity (validation threshold)",
    "positive_rate": "Share called positive (p ≥ 0.5)",
    "accuracy": "Accuracy",
    "f1": "F1 (p ≥ 0.5)",
    "macro_f1": "Macro F1",
    "balanced_accuracy": "Balanced accuracy",
}
# classwise.csv: per size, fold and class (classwise_summary.csv pools the folds).
CLASSWISE_COLUMNS = [
    "size",
    "fold",
    "class_name",
    "support",
    "n_predicted",
    "precision",
    "sensitivity",
]
# A comparison's comparison.csv and wilcoxon.csv.
COMPARISON_COLUMNS = [
    "size",
    "experiment",
    "n_folds",
    "mean",
    "sd",
    "median",
    "n_at_95_plateau",
    "plateau",
]
WILCOXON_COLUMNS = [
    "size",
    "experiment_a",
    "experiment_b",
    "n_pairs",
    "n_nonzero",
    "mean_difference",
    "statistic",
    "p_value",
    "min_possible_p",
    "note",
]

# ------------------------------------------------------------------------ collapsed networks
# A network can end training without having learned the task: every hidden unit dead on the
# data, so that it gives one constant probability vector whatever the image (ROC-AUC 0.5 by
# construction), or never moved off the ln 2 plateau, so that early stopping restores its
# first epochs' nearly constant output, whose ranking of the images is noise. Such a
# network is a failed training, not a measurement of how well n images teach the task;
# fewcells marks it (train_info.json, metrics.csv, summary.md, the figures) and never
# retrains it silently.

# Test and validation probabilities all within this of each other: a failed training. Of 512
# networks trained on ALL-IDB2 and PBC, 20 had spreads below 0.007 (all stuck at ln 2), the
# others above 0.32.
COLLAPSE_TOLERANCE = 0.01


def output_spread(probabilities: np.ndarray) -> float:
    """The largest range of one class's probability over the images (rows): 0 for a
    constant output, and for no images."""
    probabilities = np.asarray(probabilities, dtype=float)
    if len(probabilities) == 0:
        return 0.0
    return float((probabilities.max(axis=0) - probabilities.min(axis=0)).max())


def is_collapsed(spread: float) -> bool:
    """Whether an output spread (see output_spread) is a (nearly) constant output."""
    return bool(spread < COLLAPSE_TOLERANCE)


# --------------------------------------------------------------------------- classes.json


def task_of(class_names: Sequence[str]) -> str:
    """The task of a list of classes: binary (exactly two) or multiclass."""
    return "binary" if len(class_names) == 2 else "multiclass"


def classes_record(class_names: Sequence[str]) -> dict:
    """What classes.json holds: the class names in target order and the task."""
    return {"classes": list(class_names), "task": task_of(class_names)}


def read_classes(path: str | os.PathLike) -> tuple[list[str], str]:
    """Class names (in target order) and task from classes.json, checked: two or more
    distinct names, a known task, exactly two classes for a binary one."""
    path = Path(path)
    try:
        content = json.loads(path.read_text())
        classes, task = content["classes"], content["task"]
    except FileNotFoundError as error:
        raise FewcellsError(f"{path}: file not found") from error
    except OSError as error:
        raise FewcellsError(f"{path}: cannot read the class list: {error}") from error
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise FewcellsError(f"{path}: needs JSON with 'classes' and 'task' ({error})") from error
    if task not in MAIN_METRIC:
        raise FewcellsError(f"{path}: task must be one of {sorted(MAIN_METRIC)}, got {task!r}")
    if not isinstance(classes, list) or len(classes) < 2 or len(set(classes)) != len(classes):
        raise FewcellsError(f"{path}: 'classes' must list 2 or more distinct names")
    if task == "binary" and len(classes) != 2:
        raise FewcellsError(f"{path}: a binary task needs exactly 2 classes, got {classes}")
    return [str(c) for c in classes], task


# ---------------------------------------------------------------------------- CSV tables


def read_table(
    path: str | os.PathLike,
    columns: Sequence[str],
    *,
    what: str | None = None,
    dtype: dict | None = None,
) -> pd.DataFrame:
    """A CSV file that must have `columns`; FewcellsError naming the file (and `what` it
    should be) when it is missing, unreadable or lacks any of them."""
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=dtype)
    except FileNotFoundError as error:
        raise FewcellsError(f"{path}: file not found") from error
    except (
        OSError,
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
    ) as error:
        raise FewcellsError(f"{path}: not a readable CSV ({error})") from error
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        not_what = f"not {what}, " if what else ""
        raise FewcellsError(f"{path}: {not_what}missing column(s) {missing}")
    return frame
