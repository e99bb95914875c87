"""Fitting a CellClassifier with Lightning: the Trainer session, early stopping with the best
checkpoint, and the two phases of fine-tuning (head only, then every layer).

With `train.finetune` (a network that starts from pretrained weights) training has two
phases: `fit_head` trains only the classifier head for a fixed number of epochs, then
`fit_best` trains every layer except the BatchNorm layers (kept frozen, in eval mode) with
the normal protocol; history.csv then has a `phase` column (head, finetune).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from fewcells.training.callbacks import EpochHistory
from fewcells.training.datamodule import CellDataModule
from fewcells.training.memory import keep_freed_memory, unfilled_new_memory
from fewcells.training.module import FINETUNE_PHASE, HEAD_PHASE, CellClassifier


@contextlib.contextmanager
def lightning_session() -> Iterator[None]:
    """Quiet Lightning (info chatter; the few-workers and eval-mode warnings: num_workers=0
    and frozen BatchNorm are deliberate), make training steps cheaper (fewcells.training.memory) and
    undo Lightning's process-wide deterministic-algorithms switch afterwards."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [logger.level for logger in loggers]
    deterministic = torch.are_deterministic_algorithms_enabled()
    keep_freed_memory()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        # Lightning's SLURM detection: jobs run by Snakemake's SLURM executor start on their own.
        warnings.filterwarnings("ignore", message=".*The `srun` command is available.*")
        warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
        # Frozen BatchNorm layers (model.freeze) stay in eval mode on purpose.
        warnings.filterwarnings(
            "ignore", message=".*module.s. in eval mode at the start of training.*"
        )
        # The checkpoint goes into the job's own temporary folder, beside its other outputs.
        warnings.filterwarnings("ignore", message=".*Checkpoint directory .* is not empty.*")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            with unfilled_new_memory():
                yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
            torch.use_deterministic_algorithms(deterministic)


def make_trainer(
    cfg: dict, max_epochs: int, callbacks: list, root: Path, progress: bool, **kw
) -> L.Trainer:
    """A Lightning Trainer for the protocol `cfg`: deterministic, one device, no logger."""
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator=cfg["accelerator"],
        devices=1,
        precision=cfg["precision"],
        deterministic=True,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=root,
        **kw,
    )


def trainable_parameters(module: CellClassifier) -> int:
    """Parameters of the network that the current phase trains."""
    return sum(p.numel() for p in module.model.parameters() if p.requires_grad)


def fit_head(
    module: CellClassifier,
    data: CellDataModule,
    cfg: dict,
    history: EpochHistory,
    root: Path,
    *,
    progress: bool = False,
) -> dict:
    """Transfer learning, phase 1: train only the head for finetune.head_epochs epochs at
    finetune.head_lr (no early stopping, no checkpoint). Returns the phase's summary."""
    finetune = cfg["finetune"]
    module.set_phase(HEAD_PHASE, lr=finetune["head_lr"])
    history.start_phase(HEAD_PHASE)
    summary = {
        "epochs": finetune["head_epochs"],
        "lr": finetune["head_lr"],
        "trainable_parameters": trainable_parameters(module),
        "seconds": 0.0,
    }
    if finetune["head_epochs"] > 0:
        trainer = make_trainer(
            cfg, finetune["head_epochs"], [history], root, progress, enable_checkpointing=False
        )
        started = time.perf_counter()
        trainer.fit(module, datamodule=data)
        summary["seconds"] = time.perf_counter() - started
        print(f"{history.describe()} (head phase in {summary['seconds']:.0f} s)", file=sys.stderr)
    return summary


def fit_best(
    module: CellClassifier,
    data: CellDataModule,
    cfg: dict,
    history: EpochHistory,
    root: Path,
    *,
    progress: bool = False,
) -> tuple[L.Trainer, ModelCheckpoint, float]:
    """The normal protocol: at most max_epochs, early stopping on val_loss after `patience`
    epochs without improvement, the best weights saved as ROOT/model.ckpt. Returns the
    trainer, the checkpoint callback and the seconds of fitting."""
    checkpoint = ModelCheckpoint(
        dirpath=root,
        filename="model",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
    )
    early_stopping = EarlyStopping(monitor="val_loss", patience=cfg["patience"], mode="min")
    trainer = make_trainer(
        cfg, cfg["max_epochs"], [history, checkpoint, early_stopping], root, progress
    )
    started = time.perf_counter()
    trainer.fit(module, datamodule=data)
    seconds = time.perf_counter() - started
    print(f"{history.describe()} (finished in {seconds:.0f} s)", file=sys.stderr)
    return trainer, checkpoint, seconds


def fit_classifier(
    module: CellClassifier,
    data: CellDataModule,
    cfg: dict,
    history: EpochHistory,
    root: Path,
    *,
    progress: bool = False,
) -> tuple[L.Trainer, ModelCheckpoint, float, dict | None]:
    """fit_best, preceded with train.finetune by the head-only phase, and run with the
    BatchNorm layers frozen if finetune.freeze_batchnorm. Returns fit_best's trainer,
    checkpoint, the seconds of both phases and (with finetune) a summary per phase."""
    finetune = cfg["finetune"]
    if finetune is None:
        trainer, checkpoint, seconds = fit_best(module, data, cfg, history, root, progress=progress)
        return trainer, checkpoint, seconds, None
    head = fit_head(module, data, cfg, history, root, progress=progress)
    module.set_phase(FINETUNE_PHASE, freeze_batchnorm=finetune["freeze_batchnorm"])
    history.start_phase(FINETUNE_PHASE)
    tuned = {
        "lr": cfg["lr"],
        "trainable_parameters": trainable_parameters(module),
        "frozen_batchnorm_layers": module.frozen_batchnorm_layers(),
    }
    trainer, checkpoint, seconds = fit_best(module, data, cfg, history, root, progress=progress)
    tuned |= {"epochs": len(history.rows) - head["epochs"], "seconds": seconds}
    return trainer, checkpoint, head["seconds"] + seconds, {HEAD_PHASE: head, FINETUNE_PHASE: tuned}
