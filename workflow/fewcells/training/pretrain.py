"""Pretraining one network on a source experiment, for transfer learning.

The source experiment's deduplicated images (its tensor store) are split once, stratified and
seeded, into a validation set (early stopping) and a training set (everything else); the network
is trained with the CellDataModule, CellClassifier and protocol of every training (see
fewcells.training.fit.fit_classifier). The output folder holds model.ckpt (read by a target
experiment's model.pretrained, like any fewcells checkpoint), history.csv, train_info.json,
split.csv (the split, in the folds.csv format with fold 0) and classes.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from fewcells.atomic import atomic_path
from fewcells.contracts import FOLD_COLUMNS, INDEX_COLUMNS, classes_record, read_table
from fewcells.data.folds import map_classes
from fewcells.errors import FewcellsError
from fewcells.training.callbacks import EpochHistory
from fewcells.training.datamodule import fold_data
from fewcells.training.fit import fit_classifier, lightning_session
from fewcells.training.module import CellClassifier
from fewcells.training.outputs import run_costs, write_train_info
from fewcells.training.protocol import fill_train_defaults

SPLIT_FOLD = 0


def pretrain_split(
    index: pd.DataFrame, classes: list[dict] | None, *, val_fraction: float, seed: int
) -> tuple[pd.DataFrame, list[str]]:
    """Every image of the store whose label maps to a class: a stratified validation set of
    round(val_fraction * n) images (at least one per class) and the rest a training pool.

    Returns (a folds.csv-like table with fold 0, roles val / pool, pool ranks 0..n-1, class
    names in target order). The same seed gives the same split.
    """
    data = index[["image_id", "label"]].copy()
    data["label"] = data["label"].astype(str)
    data["class_name"], names = map_classes(data["label"], classes)
    data = data.dropna(subset=["class_name"]).sort_values("image_id").reset_index(drop=True)
    data["target"] = data["class_name"].map({name: i for i, name in enumerate(names)})
    counts = data["class_name"].value_counts()
    if len(names) < 2:
        raise FewcellsError(f"pretrain: need at least two classes, got {names}")
    missing = [name for name in names if counts.get(name, 0) < 2]
    if missing:
        raise FewcellsError(
            f"pretrain: every class needs at least two images (classes {names}; too few: {missing})"
        )
    n_val = max(len(names), round(val_fraction * len(data)))
    if n_val > len(data) - len(names):
        raise FewcellsError(
            f"pretrain.val_fraction = {val_fraction} leaves too few training images "
            f"({len(data)} images, {len(names)} classes)"
        )
    pool, val = train_test_split(
        data, test_size=n_val, stratify=data["class_name"], random_state=seed
    )
    pool = pool.sort_values("image_id").assign(role="pool", rank=np.arange(len(pool)))
    val = val.sort_values("image_id").assign(role="val", rank=-1)
    split = pd.concat([val, pool], ignore_index=True).assign(fold=SPLIT_FOLD)
    return split[list(FOLD_COLUMNS)], names


def run_pretraining(
    store_dir: str | os.PathLike,
    classes: list[dict] | None,
    train_cfg: dict,
    model_cfg: dict,
    out_dir: str | os.PathLike,
    *,
    image_size: int,
    val_fraction: float,
    split_seed: int,
    progress: bool = False,
) -> dict:
    """Train one network on the whole store but a validation split; write OUT_DIR atomically.

    `classes` is the experiment's `classes` section (None: every label its own class).
    The training seed is train_cfg["seed"]. Returns the train_info dict.
    """
    started = time.perf_counter()
    cfg = fill_train_defaults(train_cfg)
    if cfg["finetune"] is not None:
        raise FewcellsError("pretrain: the pretraining protocol has no finetune phase")
    store_dir = Path(store_dir)
    index = read_table(store_dir / "index.csv", INDEX_COLUMNS)
    index["image_id"] = index["image_id"].astype(str)
    split, names = pretrain_split(index, classes, val_fraction=val_fraction, seed=split_seed)
    n_train = int((split["role"] == "pool").sum())
    seed = int(cfg["seed"])
    torch.set_num_threads(int(cfg["threads"]))
    with lightning_session(), atomic_path(out_dir, directory=True) as tmp:
        split.to_csv(tmp / "split.csv", index=False)
        (tmp / "classes.json").write_text(json.dumps(classes_record(names)) + "\n")
        data = fold_data(
            store_dir,
            tmp / "split.csv",
            tmp / "classes.json",
            SPLIT_FOLD,
            n_train,
            cfg,
            seed,
            image_size,
        )
        L.seed_everything(seed, workers=True, verbose=False)
        module = CellClassifier(model_cfg, len(names), image_size, cfg, names, seed)
        history = EpochHistory(SPLIT_FOLD, n_train)
        trainer, checkpoint, fit_seconds, _ = fit_classifier(
            module, data, cfg, history, tmp, progress=progress
        )
        history.save(tmp / "history.csv")
        best = history.best()
        info = {
            "classes": names,
            "n_train_images": n_train,
            "n_val_images": int((split["role"] == "val").sum()),
            "val_fraction": val_fraction,
            "split_seed": split_seed,
            "epochs_run": len(history.rows),
            "best_epoch": best["epoch"],
            "best_val_loss": float(checkpoint.best_model_score),
            "best_val_accuracy": best["val_accuracy"],
            **run_costs(module, data, history, trainer, started, fit_seconds, seed),
        }
        write_train_info(info, tmp)
    print(f"pretrain: {json.dumps(info)}", file=sys.stderr)
    return info
