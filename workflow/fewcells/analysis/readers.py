"""Readers of the training outputs an evaluation reads (predictions.csv, history.csv,
train_info.json), each checked against its contract (fewcells.contracts)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fewcells.analysis.metrics import probability_columns, with_replicate
from fewcells.contracts import HISTORY_COLUMNS, PREDICTION_COLUMNS, RUN_KEYS, read_table
from fewcells.errors import FewcellsError


def read_training_table(path: Path, required: Sequence[str]) -> pd.DataFrame:
    """One training's CSV output with the `required` columns: rows of exactly one network
    (size, fold, replicate; replicate 0 where the file has no such column)."""
    if not path.is_file():
        raise FewcellsError(f"{path}: file not found")
    frame = read_table(path, required, dtype={"image_id": str, "split": str})
    if frame.empty:
        raise FewcellsError(f"{path}: has no rows")
    frame = with_replicate(frame)
    for column in RUN_KEYS:
        if not pd.api.types.is_integer_dtype(frame[column]):
            raise FewcellsError(f"{path}: column {column!r} must hold integers")
    if frame[RUN_KEYS].drop_duplicates().shape[0] != 1:
        raise FewcellsError(
            f"{path}: must hold exactly one (size, fold, replicate); a training writes one"
        )
    return frame


def read_predictions(
    paths: Sequence[str | os.PathLike], class_names: Sequence[str]
) -> pd.DataFrame:
    """Concatenate predictions.csv files, checking each against the contract."""
    probability = [f"p_{name}" for name in class_names]
    frames, seen = [], {}
    for path in map(Path, paths):
        frame = read_training_table(
            path, [c for c in PREDICTION_COLUMNS if c != "replicate"] + probability
        )
        extra = [c for c in probability_columns(frame) if c not in probability]
        if extra:
            raise FewcellsError(
                f"{path}: probability columns {extra} are not classes {list(class_names)}"
            )
        key = tuple(int(frame[column].iloc[0]) for column in RUN_KEYS)
        if key in seen:
            raise FewcellsError(
                f"{path}: size {key[0]} fold {key[1]} replicate {key[2]} already read from "
                f"{seen[key]}"
            )
        seen[key] = path
        if not (frame["split"] == "test").any():
            raise FewcellsError(f"{path}: no rows with split == 'test'")
        if not all(pd.api.types.is_numeric_dtype(frame[c]) for c in probability):
            raise FewcellsError(f"{path}: probability columns must hold numbers")
        if not frame["target"].isin(range(len(class_names))).all():
            raise FewcellsError(f"{path}: 'target' must be class indices 0..{len(class_names) - 1}")
        values = frame[probability].to_numpy(dtype=float)
        if not np.isfinite(values).all() or (values < 0).any() or (values > 1).any():
            raise FewcellsError(f"{path}: probabilities must be numbers in [0, 1]")
        if not np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
            raise FewcellsError(f"{path}: probabilities of a row must sum to 1")
        if frame.duplicated(["split", "image_id"]).any():
            raise FewcellsError(f"{path}: an image_id appears twice in one split")
        frames.append(frame[PREDICTION_COLUMNS + probability])
    if not frames:
        raise FewcellsError("no predictions.csv files given")
    return pd.concat(frames, ignore_index=True)


def read_histories(paths: Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate history.csv files, checking each against the contract (the optional
    `phase` column of fine-tuned trainings is kept)."""
    frames = []
    for path in map(Path, paths):
        frame = read_training_table(path, [c for c in HISTORY_COLUMNS if c != "replicate"])
        numeric = ["epoch", "train_loss", "val_loss"]
        if not all(pd.api.types.is_numeric_dtype(frame[c]) for c in numeric):
            raise FewcellsError(f"{path}: columns {numeric} must hold numbers")
        if frame["epoch"].isna().any():
            raise FewcellsError(f"{path}: 'epoch' has empty cells")
        frames.append(frame[[*HISTORY_COLUMNS, *(["phase"] if "phase" in frame else [])]])
    if not frames:
        raise FewcellsError("no history.csv files given")
    return pd.concat(frames, ignore_index=True)


def read_train_infos(paths: Sequence[str | os.PathLike]) -> list[dict]:
    """The train_info.json of each training (a missing or unreadable file is an error)."""
    infos = []
    for path in map(Path, paths):
        try:
            infos.append(json.loads(path.read_text()))
        except FileNotFoundError as error:
            raise FewcellsError(f"{path}: file not found") from error
        except (OSError, json.JSONDecodeError) as error:
            raise FewcellsError(f"{path}: not readable JSON ({error})") from error
    return infos
