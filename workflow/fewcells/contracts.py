"""Columns of the tables one stage writes and the next reads."""

from __future__ import annotations

# history.csv of a training: one row per epoch (a fine-tuned training adds `phase`).
HISTORY_COLUMNS = (
    "fold",
    "size",
    "replicate",
    "epoch",
    "train_loss",
    "val_loss",
    "val_accuracy",
    "lr",
)
