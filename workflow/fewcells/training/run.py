"""Training one network for one (training size, fold, replicate) job with PyTorch Lightning
(train.engine per_fold, and one after another with sequential).

`CellDataModule` serves a fold's images from the tensor store, `CellClassifier` wraps the
network (augmentation happens on the batch, on the device), and `run_training` trains with
early stopping on validation loss, then writes the job's outputs (fewcells.training.outputs;
their columns are in fewcells.contracts): model.ckpt, history.csv, predictions.csv,
embeddings.npz and train_info.json.
"""

from __future__ import annotations

import os
import sys
import time

import lightning as L
import torch

from fewcells.atomic import atomic_path
from fewcells.contracts import read_classes
from fewcells.training.callbacks import EpochHistory
from fewcells.training.datamodule import fold_data
from fewcells.training.fit import fit_classifier, lightning_session
from fewcells.training.module import CellClassifier
from fewcells.training.outputs import run_costs, write_outputs, write_train_info
from fewcells.training.protocol import fill_train_defaults, training_seed


def run_training(
    store_dir: str | os.PathLike,
    folds_csv: str | os.PathLike,
    classes_json: str | os.PathLike,
    fold: int,
    size: int,
    train_cfg: dict,
    model_cfg: dict,
    out_dir: str | os.PathLike,
    *,
    image_size: int,
    replicate: int = 0,
    progress: bool = False,
) -> dict:
    """Train one network on fold `fold` with `size` training images; write the job outputs.

    The seed is training_seed(train_cfg, fold, size, replicate). Training stops early when
    val_loss has not improved for `patience` epochs; the best-val-loss weights are kept
    (model.ckpt) and used for predictions and embeddings. With train_cfg["finetune"] the
    head-only phase comes first (see fit_classifier). Everything is written in a temporary
    sibling renamed onto `out_dir` at the end, so a failed or killed job leaves no `out_dir`.
    Returns the train_info dict (also in train_info.json).
    """
    started = time.perf_counter()
    cfg = fill_train_defaults(train_cfg)
    class_names, _ = read_classes(classes_json)
    seed = training_seed(cfg, fold, size, replicate)
    torch.set_num_threads(int(cfg["threads"]))
    data = fold_data(store_dir, folds_csv, classes_json, fold, size, cfg, seed, image_size)
    if model_cfg.get("weights") is not None:
        print(f"starting from the weights in {model_cfg['weights']}", file=sys.stderr)
    with lightning_session(), atomic_path(out_dir, directory=True) as tmp:
        L.seed_everything(seed, workers=True, verbose=False)
        module = CellClassifier(model_cfg, len(class_names), image_size, cfg, class_names, seed)
        history = EpochHistory(fold, size, replicate=replicate)
        trainer, checkpoint, fit_seconds, phases = fit_classifier(
            module, data, cfg, history, tmp, progress=progress
        )
        best_module = CellClassifier.from_checkpoint(checkpoint.best_model_path)
        predictions = trainer.predict(best_module, dataloaders=data.predict_dataloader())
        outputs = write_outputs(tmp, data, predictions, class_names, history)
        best = history.best()
        info = {
            "fold": fold,
            "size": size,
            "replicate": replicate,
            "n_train_images": int((data.fold_frame["role"] == "train").sum()),
            "epochs_run": len(history.rows),
            "best_epoch": best["epoch"],
            "best_val_loss": float(checkpoint.best_model_score),
            **outputs,
            **run_costs(module, data, history, trainer, started, fit_seconds, seed),
        }
        if phases is not None:
            info |= {"weights": model_cfg.get("weights"), "phases": phases}
        write_train_info(info, tmp)
    return info
