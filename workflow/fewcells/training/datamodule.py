"""The data of one training: a fold's images for one training size, served from the tensor
store by a Lightning DataModule (whole batches, in the main process)."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from fewcells.contracts import FOLD_COLUMNS, read_classes, read_table
from fewcells.data.store import open_store
from fewcells.errors import FewcellsError

EVAL_BATCH_SIZE = 64  # validation/test/predict batches: no augmentation, no batch statistics


class IndexedImages(Dataset):
    """images[rows[i]] with targets[i], fetched a whole batch at a time: dataset[list_of_i].

    `images` is a uint8 (N, H, W, C) tensor in memory or a memory-mapped numpy array.
    """

    def __init__(self, images: torch.Tensor | np.ndarray, rows: np.ndarray, targets: np.ndarray):
        self.images = images
        self.rows = np.asarray(rows, dtype=np.int64)
        self.targets = torch.tensor(np.asarray(targets), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.rows[indices]
        if isinstance(self.images, torch.Tensor):
            batch = self.images.index_select(0, torch.from_numpy(rows))
        else:
            batch = torch.from_numpy(np.asarray(self.images[rows]))
        return batch, self.targets[indices]


def batch_loader(
    dataset: Dataset, batch_size: int, generator: torch.Generator | None = None
) -> DataLoader:
    """Whole batches by one dataset[indices] call (no per-image collation), in the main process."""
    order = (
        RandomSampler(dataset, generator=generator)
        if generator is not None
        else SequentialSampler(dataset)
    )
    return DataLoader(
        dataset,
        sampler=BatchSampler(order, batch_size=batch_size, drop_last=False),
        batch_size=None,
        num_workers=0,
    )


def balanced_positions(targets: np.ndarray, per_class: int) -> np.ndarray:
    """Positions into `targets` repeating each class's images cyclically to an equal count.

    Every class gets max(per_class, largest class count) entries, so no image is dropped; the
    random augmentation makes the repeats different images (the paper's balancing by
    augmentation).
    """
    classes = np.unique(targets)
    count = max(per_class, max(int((targets == c).sum()) for c in classes))
    return np.concatenate([np.resize(np.flatnonzero(targets == c), count) for c in classes])


class CellDataModule(L.LightningDataModule):
    """One fold's images for training size `size`, served from the tensor store.

    setup() memory-maps STORE/images.npy and copies the fold's train, validation and test images
    into memory (uint8, channels-last). The training set is the fold's pool rows with
    rank < size, optionally oversampled to `balance_to` images per class. The predict set is
    every image of the fold, read from the memory map. `fold_frame` lists those images with
    their role: test, val, train or pool_unused; `store_images` is the memory-mapped store.
    """

    def __init__(
        self,
        store_dir: str | os.PathLike,
        folds_csv: str | os.PathLike,
        fold: int,
        size: int,
        *,
        batch_size: int = 5,
        seed: int = 0,
        balance_to: int | None = None,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.store_dir = Path(store_dir)
        self.folds_csv = Path(folds_csv)
        self.fold = fold
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.balance_to = balance_to
        self.image_size = image_size
        self.fold_frame: pd.DataFrame | None = None
        self.splits: dict[str, IndexedImages] = {}
        self.store_images: np.ndarray | None = None

    def _fold_frame(self, index: pd.DataFrame) -> pd.DataFrame:
        folds = read_table(self.folds_csv, FOLD_COLUMNS)
        frame = folds[folds["fold"] == self.fold].reset_index(drop=True)
        where = f"{self.folds_csv}, fold {self.fold}, size {self.size}"
        if frame.empty:
            raise FewcellsError(f"{self.folds_csv}: no rows for fold {self.fold}")
        store_rows = dict(zip(index["image_id"], index["row"], strict=True))
        unknown = sorted(set(frame["image_id"]) - set(store_rows))
        if unknown:
            raise FewcellsError(
                f"{where}: {len(unknown)} image_id(s) missing from {self.store_dir / 'index.csv'}"
                f", e.g. {unknown[0]}"
            )
        frame["store_row"] = frame["image_id"].map(store_rows).astype(np.int64)
        pool = frame["role"] == "pool"
        if pool.sum() < self.size:
            raise FewcellsError(
                f"folds.sizes: training size {self.size} is larger than the training pool "
                f"({pool.sum()} images) of fold {self.fold} in {self.folds_csv}"
            )
        frame.loc[pool, "role"] = np.where(
            frame.loc[pool, "rank"] < self.size, "train", "pool_unused"
        )
        train_targets = frame.loc[frame["role"] == "train", "target"]
        if train_targets.nunique() < 2:
            raise FewcellsError(
                f"{where}: the training set needs at least two classes, "
                f"has {train_targets.nunique()} ({len(train_targets)} images)"
            )
        if not (frame["role"] == "val").any():
            raise FewcellsError(f"{where}: no validation images (role 'val')")
        return frame

    def read_fold(self) -> pd.DataFrame:
        """The checked fold_frame (the store memory-mapped, no image read), once."""
        if self.fold_frame is None:
            images, index = open_store(self.store_dir, self.image_size)
            self.fold_frame = self._fold_frame(index)
            self.store_images = images
        return self.fold_frame

    def role_positions(self, role: str) -> np.ndarray:
        """Positions into the fold_frame rows of `role` that make up its split: every row once,
        the training rows oversampled to balance_to per class when that is set."""
        targets = self.read_fold().loc[lambda f: f["role"] == role, "target"].to_numpy()
        if role == "train" and self.balance_to:
            return balanced_positions(targets, self.balance_to)
        return np.arange(len(targets))

    def setup(self, stage: str) -> None:
        """Read the fold's train, val and test images into memory (once)."""
        if self.splits:
            return
        frame = self.read_fold()
        for role in ("train", "val", "test"):
            part = frame[frame["role"] == role]
            rows = part["store_row"].to_numpy()
            in_memory = torch.from_numpy(np.ascontiguousarray(self.store_images[rows]))
            positions = self.role_positions(role)
            self.splits[role] = IndexedImages(
                in_memory, positions, part["target"].to_numpy()[positions]
            )

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return batch_loader(self.splits["train"], self.batch_size, generator)

    def val_dataloader(self) -> DataLoader:
        return batch_loader(self.splits["val"], EVAL_BATCH_SIZE)

    def test_dataloader(self) -> DataLoader:
        return batch_loader(self.splits["test"], EVAL_BATCH_SIZE)

    def predict_dataloader(self) -> DataLoader:
        """Every image of the fold, in fold_frame order."""
        frame = self.fold_frame
        dataset = IndexedImages(
            self.store_images, frame["store_row"].to_numpy(), frame["target"].to_numpy()
        )
        return batch_loader(dataset, EVAL_BATCH_SIZE)


def fold_data(
    store_dir: str | os.PathLike,
    folds_csv: str | os.PathLike,
    classes_json: str | os.PathLike,
    fold: int,
    size: int,
    cfg: dict,
    seed: int,
    image_size: int,
    *,
    read_images: bool = True,
) -> CellDataModule:
    """The data of one (fold, size) training, targets checked against classes.json; set up
    (images in memory) unless `read_images` is False (only the fold_frame read)."""
    n_classes = len(read_classes(classes_json)[0])
    data = CellDataModule(
        store_dir,
        folds_csv,
        fold,
        size,
        batch_size=int(cfg["batch_size"]),
        seed=seed,
        balance_to=cfg["balance_to"],
        image_size=image_size,
    )
    if read_images:
        data.setup("fit")
    if not data.read_fold()["target"].between(0, n_classes - 1).all():
        raise FewcellsError(
            f"{folds_csv}: targets outside 0..{n_classes - 1} ({classes_json} lists "
            f"{n_classes} classes)"
        )
    return data
