"""Fold assignment: stratified k-fold test sets, validation sets, nested training sizes.

Per fold, the training pool gets one fixed, class-balanced order (classes interleaved
round-robin, each class shuffled by the fold's seed); the training set of size n is the
first n images of that order, so every set contains the smaller ones.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from fewcells.contracts import FOLD_COLUMNS
from fewcells.errors import FewcellsError

REST = "*"


def map_classes(labels: pd.Series, classes: list[dict] | None) -> tuple[pd.Series, list[str]]:
    """Map manifest labels to class names; return (class per image or NA, class names).

    `classes` is a list of {"name": ..., "labels": [...]} in target order; the label "*"
    takes every label no other class names. Without it every label is its own class.
    """
    if not classes:
        names = sorted(labels.unique())
        return labels.copy(), names
    names = [entry["name"] for entry in classes]
    if len(set(names)) != len(names):
        raise FewcellsError(f"classes: class names must be unique, got {names}")
    label_to_class: dict[str, str] = {}
    rest_class = None
    for entry in classes:
        for label in entry["labels"]:
            if label == REST:
                if rest_class is not None:
                    raise FewcellsError("classes: only one class may take the rest ('*')")
                rest_class = entry["name"]
            elif label in label_to_class:
                raise FewcellsError(f"classes: label {label!r} is claimed by two classes")
            else:
                label_to_class[label] = entry["name"]
    unknown = set(label_to_class) - set(labels.unique())
    if unknown:
        raise FewcellsError(
            f"classes: label(s) {sorted(unknown)} do not occur in the data set "
            f"(labels present: {sorted(labels.unique())})"
        )
    mapped = labels.map(label_to_class)
    if rest_class is not None:
        mapped = mapped.fillna(rest_class)
    return mapped, names


def balanced_order(class_names: pd.Series, rng: np.random.Generator) -> np.ndarray:
    """Positional indices interleaving the classes round-robin, each class shuffled."""
    queues = [
        list(rng.permutation(np.flatnonzero(class_names.to_numpy() == name)))
        for name in sorted(class_names.unique())
    ]
    order = []
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    return np.asarray(order, dtype=int)


def _fold_rows(fold, data, test_idx, n_val, seed) -> list[pd.DataFrame]:
    rest = data.drop(index=data.index[test_idx])
    n_classes = data["class_name"].nunique()
    if n_val < n_classes:
        raise FewcellsError(
            f"folds.n_val = {n_val} is smaller than the number of classes ({n_classes}): "
            "the validation set is stratified"
        )
    if n_val >= len(rest):
        raise FewcellsError(f"folds.n_val = {n_val} leaves no training pool ({len(rest)} images)")
    pool, val = train_test_split(
        rest, test_size=n_val, stratify=rest["class_name"], random_state=seed + fold
    )
    pool = pool.sort_values("image_id")
    order = balanced_order(pool["class_name"], np.random.default_rng(seed + fold))
    pool = pool.iloc[order].assign(role="pool", rank=np.arange(len(pool)))
    parts = [
        data.iloc[test_idx].assign(role="test", rank=-1),
        val.sort_values("image_id").assign(role="val", rank=-1),
        pool,
    ]
    return [part.assign(fold=fold) for part in parts]


def assign_folds(
    kept: pd.DataFrame,
    classes: list[dict] | None,
    *,
    k: int = 10,
    n_val: int = 25,
    sizes: list[int] | None = None,
    seed: int = 0,
    test_size: int | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Assign every image to test/val/pool per fold; return (folds table, class names).

    Without `test_size`: stratified k-fold, every image a test image exactly once. With
    it: one balanced test set of that size (test_size / n_classes per class) shared by
    all k folds, each fold drawing its own validation set and pool from the rest.
    """
    data = kept[["image_id", "label"]].copy()
    data["class_name"], names = map_classes(data["label"].astype(str), classes)
    data = data.dropna(subset=["class_name"]).sort_values("image_id").reset_index(drop=True)
    data["target"] = data["class_name"].map({name: i for i, name in enumerate(names)})
    counts = data["class_name"].value_counts()
    if len(names) < 2:
        raise FewcellsError(f"classes: need at least two classes, got {names}")
    missing = [name for name in names if counts.get(name, 0) == 0]
    if missing:
        raise FewcellsError(f"classes: no images for class(es) {missing}")
    if k < 2:
        raise FewcellsError(f"folds.k must be at least 2, got {k}")
    rows = []
    if test_size is None:
        if counts.min() < k:
            raise FewcellsError(
                f"folds.k = {k} is larger than the smallest class ({counts.idxmin()}: "
                f"{counts.min()} images)"
            )
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        for fold, (_, test_idx) in enumerate(splitter.split(data, data["class_name"])):
            rows += _fold_rows(fold, data, test_idx, n_val, seed)
    else:
        per_class = test_size // len(names)
        if per_class * len(names) != test_size or counts.min() <= per_class:
            raise FewcellsError(
                f"folds.test_size = {test_size} must split evenly over {len(names)} classes "
                f"and leave images for training (smallest class: {counts.min()})"
            )
        rng = np.random.default_rng(seed)
        test_idx = np.sort(
            np.concatenate(
                [
                    rng.choice(np.flatnonzero(data["class_name"] == name), per_class, False)
                    for name in names
                ]
            )
        )
        for fold in range(k):
            rows += _fold_rows(fold, data, test_idx, n_val, seed)
    folds = pd.concat(rows, ignore_index=True)[FOLD_COLUMNS]
    pool_sizes = folds[folds["role"] == "pool"].groupby("fold").size()
    too_big = [size for size in sizes or [] if size > pool_sizes.min()]
    if too_big:
        raise FewcellsError(
            f"folds.sizes: training size(s) {too_big} exceed the smallest training pool "
            f"({pool_sizes.min()} images)"
        )
    return folds, names


def training_set(folds: pd.DataFrame, fold: int, size: int) -> pd.DataFrame:
    """The nested training set of `size` images of `fold`."""
    pool = folds[(folds["fold"] == fold) & (folds["role"] == "pool")]
    return pool[pool["rank"] < size].sort_values("rank")
