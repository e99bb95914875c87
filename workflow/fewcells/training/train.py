"""Training one network for one (training size, fold) job with PyTorch Lightning.

`CellDataModule` serves a fold's images from the tensor store, `CellClassifier` wraps the
network (augmentation happens on the batch, on the device), and `run_training` trains with
early stopping on validation loss, then writes the job's outputs (see the data contracts):
model.ckpt, history.csv, predictions.csv, embeddings.npz and train_info.json.

With `train.finetune` (a network that starts from pretrained weights) training has two
phases: `fit_head` trains only the classifier head for a fixed number of epochs, then
`fit_best` trains every layer except the BatchNorm layers (kept frozen, in eval mode) with
the normal protocol; history.csv then has a `phase` column (head, finetune).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from fewcells.atomic import atomic_path
from fewcells.collapse import is_collapsed, output_spread
from fewcells.contracts import HISTORY_COLUMNS
from fewcells.errors import FewcellsError
from fewcells.provenance import provenance
from fewcells.training.augment import BatchAugment
from fewcells.training.kernels import loader
from fewcells.training.memory import keep_freed_memory, unfilled_new_memory
from fewcells.training.models import PaperCNN, build_model, to_model_input

DEFAULT_TRAIN_CONFIG: dict = {
    "optimizer": "rmsprop",
    "lr": 1e-3,
    "rho": 0.9,
    "momentum": 0.9,
    "batch_size": 5,
    "max_epochs": 500,
    "patience": 50,
    "seed": 0,
    "threads": 1,
    "accelerator": "auto",
    "precision": "32-true",
    "fused_cpu_kernel": True,
    "balance_to": None,
    "finetune": None,
    "augment": {
        "flips": True,
        "rotation": True,
        "noise_std": 0.0,
        "brightness": 0.0,
        "contrast": 0.0,
        "rotation_sampling": "bilinear",
    },
}

OPTIMIZERS: dict[str, Callable[[Iterable[torch.nn.Parameter], dict], torch.optim.Optimizer]] = {
    "rmsprop": lambda params, cfg: torch.optim.RMSprop(params, lr=cfg["lr"], alpha=cfg["rho"]),
    "adam": lambda params, cfg: torch.optim.Adam(params, lr=cfg["lr"]),
    "sgd": lambda params, cfg: torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"]),
}

FOLD_COLUMNS = ("fold", "image_id", "label", "target", "class_name", "role", "rank")
INDEX_COLUMNS = ("row", "image_id", "label")
DEFAULT_FINETUNE: dict = {"head_epochs": 10, "head_lr": 0.01, "freeze_batchnorm": True}
HEAD_PHASE, FINETUNE_PHASE = "head", "finetune"
BATCHNORM_TYPES = (nn.modules.batchnorm._BatchNorm,)
EVAL_BATCH_SIZE = 64  # validation/test/predict batches: no augmentation, no batch statistics
PROGRESS_EVERY_EPOCHS = 10


def training_seed(train_cfg: dict, fold: int, size: int, replicate: int = 0) -> int:
    """The seed of one training (initial weights, batch order, augmentation):
    train.seed + 1000 * fold + size, plus 1,000,000 per replicate."""
    return int(train_cfg["seed"]) + 1000 * fold + size + 1_000_000 * replicate


def train_config(train_cfg: dict | None) -> dict:
    """DEFAULT_TRAIN_CONFIG updated by `train_cfg` (the augment section merged key by key)."""
    train_cfg = train_cfg or {}
    merged = {**DEFAULT_TRAIN_CONFIG, **train_cfg}
    merged["augment"] = {**DEFAULT_TRAIN_CONFIG["augment"], **(train_cfg.get("augment") or {})}
    if merged["finetune"] is not None:
        merged["finetune"] = {**DEFAULT_FINETUNE, **merged["finetune"]}
    if merged["optimizer"] not in OPTIMIZERS:
        raise FewcellsError(
            f"train.optimizer: unknown optimizer {merged['optimizer']!r}; "
            f"choose one of {', '.join(OPTIMIZERS)}"
        )
    return merged


def read_class_names(classes_json: str | os.PathLike) -> list[str]:
    """Class names in target order from CLASSES.json ({"classes": [...], "task": ...})."""
    try:
        classes = json.loads(Path(classes_json).read_text())["classes"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise FewcellsError(f"{classes_json}: cannot read the class list: {error}") from error
    if not isinstance(classes, list) or len(classes) < 2:
        raise FewcellsError(f"{classes_json}: 'classes' must list at least two class names")
    return [str(name) for name in classes]


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


def _batch_loader(
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


def _read_csv(path: Path, columns: Iterable[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise FewcellsError(f"{path}: cannot read CSV: {error}") from error
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FewcellsError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


class CellDataModule(L.LightningDataModule):
    """One fold's images for training size `size`, served from the tensor store.

    setup() memory-maps STORE/images.npy and copies the fold's train, validation and test images
    into memory (uint8, channels-last). The training set is the fold's pool rows with
    rank < size, optionally oversampled to `balance_to` images per class. The predict set is
    every image of the fold, read from the memory map. `fold_frame` lists those images with
    their role: test, val, train or pool_unused.
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
        self._store_images: np.ndarray | None = None

    def _open_store(self) -> tuple[np.ndarray, pd.DataFrame]:
        images_path = self.store_dir / "images.npy"
        try:
            images = np.load(images_path, mmap_mode="r")
        except (OSError, ValueError) as error:
            raise FewcellsError(f"{images_path}: cannot open the image store: {error}") from error
        if images.dtype != np.uint8 or images.ndim != 4:
            raise FewcellsError(
                f"{images_path}: expected uint8 images (N, H, W, C), "
                f"found {images.dtype} {images.shape}"
            )
        if self.image_size is not None and images.shape[1:3] != (self.image_size,) * 2:
            raise FewcellsError(
                f"{images_path}: images are {images.shape[1]}x{images.shape[2]} px, "
                f"the network expects image_size {self.image_size}"
            )
        index = _read_csv(self.store_dir / "index.csv", INDEX_COLUMNS)
        if not index["row"].between(0, len(images) - 1).all():
            raise FewcellsError(f"{self.store_dir / 'index.csv'}: rows outside images.npy")
        return images, index

    def _fold_frame(self, index: pd.DataFrame) -> pd.DataFrame:
        folds = _read_csv(self.folds_csv, FOLD_COLUMNS)
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
            images, index = self._open_store()
            self.fold_frame = self._fold_frame(index)
            self._store_images = images
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
            in_memory = torch.from_numpy(np.ascontiguousarray(self._store_images[rows]))
            positions = self.role_positions(role)
            self.splits[role] = IndexedImages(
                in_memory, positions, part["target"].to_numpy()[positions]
            )

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return _batch_loader(self.splits["train"], self.batch_size, generator)

    def val_dataloader(self) -> DataLoader:
        return _batch_loader(self.splits["val"], EVAL_BATCH_SIZE)

    def test_dataloader(self) -> DataLoader:
        return _batch_loader(self.splits["test"], EVAL_BATCH_SIZE)

    def predict_dataloader(self) -> DataLoader:
        """Every image of the fold, in fold_frame order."""
        frame = self.fold_frame
        dataset = IndexedImages(
            self._store_images, frame["store_row"].to_numpy(), frame["target"].to_numpy()
        )
        return _batch_loader(dataset, EVAL_BATCH_SIZE)


def trains_on_cpu(accelerator: str) -> bool:
    """Whether train.accelerator `accelerator` trains on the CPU here (no GPU visible, or cpu)."""
    return accelerator == "cpu" or not torch.cuda.is_available()


class CellClassifier(L.LightningModule):
    """The network of `model_cfg`, trained with cross-entropy on augmented batches.

    Batches are (uint8 images (B, H, W, C), int64 targets); training batches are augmented on
    the device with BatchAugment driven by a generator seeded with `seed`. predict_step returns
    softmax probabilities and the embedding (last hidden layer) of each image.
    """

    def __init__(
        self,
        model_cfg: dict,
        n_classes: int,
        image_size: int,
        train_cfg: dict | None = None,
        class_names: list[str] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.train_cfg = train_config(train_cfg)
        self.model = build_model(model_cfg, n_classes, image_size)
        if self.train_cfg["fused_cpu_kernel"]:
            if trains_on_cpu(self.train_cfg["accelerator"]):
                loader.load_kernel()  # built (once per machine) now, not inside the timed fit
            if isinstance(self.model, PaperCNN):
                self.model.fused_cpu_kernel = True
        augment = self.train_cfg["augment"]
        self.augment = BatchAugment(
            flips=augment["flips"],
            rotation=augment["rotation"],
            noise_std=augment["noise_std"],
            brightness=augment["brightness"],
            contrast=augment["contrast"],
            fused_cpu_kernel=self.train_cfg["fused_cpu_kernel"],
            rotation_sampling=augment["rotation_sampling"],
        )
        self._augment_generator: torch.Generator | None = None
        # requires_grad as built (model.freeze): what the fine-tuning phase goes back to.
        self._built_trainable = {n: p.requires_grad for n, p in self.model.named_parameters()}
        self._eval_modules: list[nn.Module] = []
        self.phase: str | None = None
        self.phase_lr: float | None = None

    def set_phase(
        self, phase: str | None, *, lr: float | None = None, freeze_batchnorm: bool = True
    ) -> None:
        """Choose what trains, for transfer learning (None: everything as built).

        "head": only the classifier head; every other layer is frozen and kept in eval mode.
        "finetune": every layer as built (model.freeze still applies), but, with
        `freeze_batchnorm`, the BatchNorm layers' weights and running statistics are frozen
        and the layers kept in eval mode. `lr` replaces train.lr for this phase.
        """
        if phase not in (None, HEAD_PHASE, FINETUNE_PHASE):
            raise ValueError(f"unknown training phase {phase!r}")
        self.phase, self.phase_lr = phase, lr
        batchnorm = [m for m in self.model.modules() if isinstance(m, BATCHNORM_TYPES)]
        if phase == HEAD_PHASE:
            self._eval_modules = [
                module for name, module in self.model.named_children() if name != "classifier"
            ]
        elif phase == FINETUNE_PHASE and freeze_batchnorm:
            self._eval_modules = batchnorm
        else:
            self._eval_modules = []
        frozen = {id(p) for m in self._eval_modules for p in m.parameters()}
        for name, parameter in self.model.named_parameters():
            parameter.requires_grad_(self._built_trainable[name] and id(parameter) not in frozen)
        self.train(self.training)

    def frozen_batchnorm_layers(self) -> int:
        """BatchNorm layers the current phase keeps frozen in eval mode."""
        return sum(isinstance(m, BATCHNORM_TYPES) for m in self._eval_modules)

    def train(self, mode: bool = True) -> CellClassifier:
        """Set training mode, keeping the layers the current phase freezes in eval mode."""
        super().train(mode)
        for module in self._eval_modules:
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for float images (B, C, H, W) in [0, 1]."""
        return self.model(x)

    def on_fit_start(self) -> None:
        self._augment_generator = torch.Generator(device=self.device).manual_seed(self.hparams.seed)

    def on_train_epoch_start(self) -> None:
        self._epoch_loss_sum = torch.zeros((), device=self.device)
        self._epoch_images = 0

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        images, targets = batch
        # (B, C, H, W) uint8 view: the augmentation scales to [0, 1] while it resamples
        logits = self(self.augment(images.permute(0, 3, 1, 2), self._augment_generator))
        loss = F.cross_entropy(logits, targets)
        # The epoch's mean loss (weighted by batch size, as Lightning's epoch mean), logged
        # once at the epoch's last batch: logging every step cost 1.4 ms of a 30 ms CPU step.
        self._epoch_loss_sum = self._epoch_loss_sum + loss.detach() * len(targets)
        self._epoch_images += len(targets)
        if batch_idx == self.trainer.num_training_batches - 1:
            epoch_loss = self._epoch_loss_sum / self._epoch_images
            self.log("train_loss", epoch_loss, on_step=False, on_epoch=True, batch_size=1)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> None:
        images, targets = batch
        logits = self(to_model_input(images)).float()
        metrics = {
            f"{split}_loss": F.cross_entropy(logits, targets),
            f"{split}_accuracy": (logits.argmax(dim=1) == targets).float().mean(),
        }
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=len(targets))

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def predict_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> dict[str, torch.Tensor]:
        images, _ = batch
        embedding = self.model.embed(to_model_input(images))
        logits = self.model.classifier(embedding)
        return {
            "probabilities": torch.softmax(logits.float(), dim=1),
            "embedding": embedding.float(),
        }

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, map_location: str | None = None
    ) -> CellClassifier:
        """A trained classifier from its model.ckpt. The network's weights come from the
        checkpoint, so the file training started from (`model.weights`) is not read again."""
        hparams = torch.load(path, map_location="cpu", weights_only=True)["hyper_parameters"]
        model_cfg = {**hparams["model_cfg"], "weights": None}
        return cls.load_from_checkpoint(path, map_location=map_location, model_cfg=model_cfg)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.train_cfg if self.phase_lr is None else {**self.train_cfg, "lr": self.phase_lr}
        trainable = [p for p in self.parameters() if p.requires_grad]
        return OPTIMIZERS[self.train_cfg["optimizer"]](trainable, cfg)


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


@contextlib.contextmanager
def _lightning_session() -> Iterator[None]:
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


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _write_outputs(
    tmp: Path,
    data: CellDataModule,
    predictions: list[dict[str, torch.Tensor]],
    class_names: list[str],
    history: EpochHistory,
) -> dict:
    """history.csv, predictions.csv (test + val rows) and embeddings.npz into `tmp`. Returns
    train_info's output fields: the spread of the test and validation outputs and whether
    they are constant (`collapsed`)."""
    frame = data.fold_frame
    probabilities = torch.cat([batch["probabilities"] for batch in predictions]).cpu().numpy()
    embeddings = torch.cat([batch["embedding"] for batch in predictions]).cpu().numpy()
    pd.DataFrame(history.rows, columns=history.columns()).to_csv(tmp / "history.csv", index=False)
    table = pd.DataFrame(
        {
            "fold": data.fold,
            "size": data.size,
            "replicate": history.replicate,
            "image_id": frame["image_id"],
            "target": frame["target"],
            "split": frame["role"],
        }
    )
    for column, name in enumerate(class_names):
        table[f"p_{name}"] = probabilities[:, column]
    tested = table[table["split"].isin(["test", "val"])]
    tested = tested.sort_values("split", key=lambda s: s.map({"test": 0, "val": 1}), kind="stable")
    tested.to_csv(tmp / "predictions.csv", index=False)
    np.savez(
        tmp / "embeddings.npz",
        image_id=frame["image_id"].to_numpy(dtype=str),
        role=frame["role"].to_numpy(dtype=str),
        target=frame["target"].to_numpy(dtype=np.int64),
        embedding=embeddings.astype(np.float32),
    )
    spread = output_spread(probabilities[table["split"].isin(["test", "val"]).to_numpy()])
    return {"output_spread": spread, "collapsed": is_collapsed(spread)}


def _trainer(cfg: dict, max_epochs: int, callbacks: list, root: Path, progress: bool, **kw):
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


def _trainable_parameters(module: CellClassifier) -> int:
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
        "trainable_parameters": _trainable_parameters(module),
        "seconds": 0.0,
    }
    if finetune["head_epochs"] > 0:
        trainer = _trainer(
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
    trainer = _trainer(
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
        "trainable_parameters": _trainable_parameters(module),
        "frozen_batchnorm_layers": module.frozen_batchnorm_layers(),
    }
    trainer, checkpoint, seconds = fit_best(module, data, cfg, history, root, progress=progress)
    tuned |= {"epochs": len(history.rows) - head["epochs"], "seconds": seconds}
    return trainer, checkpoint, head["seconds"] + seconds, {HEAD_PHASE: head, FINETUNE_PHASE: tuned}


def _cpu_kernel(module: CellClassifier, device: torch.device) -> str:
    """How the augmentation's rotation (and the paper CNN's first three blocks) ran: the compiled
    CPU kernels or PyTorch's layers."""
    if not module.train_cfg["fused_cpu_kernel"] or device.type != "cpu":
        return "pytorch"
    kernel, how = loader.load_kernel()
    return how if kernel is not None else f"pytorch: fused kernel {how}"


def run_costs(
    module: CellClassifier,
    data: CellDataModule,
    history: EpochHistory,
    trainer: L.Trainer,
    started: float,
    fit_seconds: float,
    seed: int,
) -> dict:
    """train_info's cost and provenance fields of a finished fit (training and pretraining)."""
    device = trainer.strategy.root_device
    return {
        "seconds": time.perf_counter() - started,
        "fit_seconds": fit_seconds,
        "image_steps_per_second": len(data.splits["train"]) * len(history.rows) / fit_seconds,
        "device": _device_name(device),
        "cpu_kernel": _cpu_kernel(module, device),
        "threads": torch.get_num_threads(),
        "seed": seed,
        "n_parameters": sum(p.numel() for p in module.model.parameters()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **provenance(),
    }


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
    """The data of one (fold, size) training, targets checked against CLASSES.json; set up
    (images in memory) unless `read_images` is False (only the fold_frame read)."""
    n_classes = len(read_class_names(classes_json))
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
    cfg = train_config(train_cfg)
    class_names = read_class_names(classes_json)
    seed = training_seed(cfg, fold, size, replicate)
    torch.set_num_threads(int(cfg["threads"]))
    data = fold_data(store_dir, folds_csv, classes_json, fold, size, cfg, seed, image_size)
    if model_cfg.get("weights") is not None:
        print(f"starting from the weights in {model_cfg['weights']}", file=sys.stderr)
    with _lightning_session(), atomic_path(out_dir, directory=True) as tmp:
        L.seed_everything(seed, workers=True, verbose=False)
        module = CellClassifier(model_cfg, len(class_names), image_size, cfg, class_names, seed)
        history = EpochHistory(fold, size, replicate=replicate)
        trainer, checkpoint, fit_seconds, phases = fit_classifier(
            module, data, cfg, history, tmp, progress=progress
        )
        best_module = CellClassifier.from_checkpoint(checkpoint.best_model_path)
        predictions = trainer.predict(best_module, dataloaders=data.predict_dataloader())
        outputs = _write_outputs(tmp, data, predictions, class_names, history)
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
        (tmp / "train_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info
