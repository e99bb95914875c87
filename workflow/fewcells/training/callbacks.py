"""The Lightning callback that records a training's history, one row per epoch."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import lightning as L
import pandas as pd

from fewcells.contracts import HISTORY_COLUMNS

PROGRESS_EVERY_EPOCHS = 10


class EpochHistory(L.Callback):
    """One history row per epoch (1-based), and a progress line on stderr every few epochs."""

    def __init__(
        self, fold: int, size: int, every: int = PROGRESS_EVERY_EPOCHS, replicate: int = 0
    ) -> None:
        self.fold = fold
        self.size = size
        self.replicate = replicate
        self.every = every
        self.rows: list[dict] = []
        self._started = 0.0
        self.phase: str | None = None
        self._epoch_offset = 0

    def start_phase(self, phase: str) -> None:
        """Later rows belong to `phase` (a `phase` column); epochs go on counting."""
        self.phase = phase
        self._epoch_offset = len(self.rows)

    def save(self, path: Path) -> None:
        """Write the rows as history.csv."""
        pd.DataFrame(self.rows, columns=self.columns()).to_csv(path, index=False)

    def columns(self) -> list[str]:
        """history.csv's columns: HISTORY_COLUMNS, plus `phase` once a phase was started."""
        return [*HISTORY_COLUMNS, "phase"] if self.phase is not None else list(HISTORY_COLUMNS)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        row = {
            "fold": self.fold,
            "size": self.size,
            "replicate": self.replicate,
            "epoch": trainer.current_epoch + 1 + self._epoch_offset,
            "train_loss": float(metrics["train_loss"]),
            "val_loss": float(metrics["val_loss"]),
            "val_accuracy": float(metrics["val_accuracy"]),
            "lr": trainer.optimizers[0].param_groups[0]["lr"],
        }
        if self.phase is not None:
            row["phase"] = self.phase
        self.rows.append(row)
        if row["epoch"] == 1 or row["epoch"] % self.every == 0:
            print(
                f"{self.describe()} ({time.perf_counter() - self._started:.0f} s)", file=sys.stderr
            )

    def best(self) -> dict:
        """The first epoch of the current phase with the lowest validation loss (the
        checkpointed one)."""
        rows = [row for row in self.rows if row.get("phase") == self.phase] or self.rows
        return min(rows, key=lambda row: row["val_loss"])

    def describe(self) -> str:
        """One line: latest epoch's losses and the best validation loss so far."""
        last, best = self.rows[-1], self.best()
        phase = f" ({self.phase})" if self.phase is not None else ""
        replicate = f" replicate {self.replicate}" if self.replicate else ""
        return (
            f"fold {self.fold}{replicate} size {self.size}{phase}: epoch {last['epoch']} "
            f"train_loss {last['train_loss']:.4f} val_loss {last['val_loss']:.4f} "
            f"val_accuracy {last['val_accuracy']:.3f} best val_loss {best['val_loss']:.4f} "
            f"at epoch {best['epoch']}"
        )
