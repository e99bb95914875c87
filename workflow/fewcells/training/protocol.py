"""The training protocol: the defaults of an experiment's `train` section, the optimizers and
the seed of each training (shared by every training engine and by pretraining)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from fewcells.errors import FewcellsError

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

DEFAULT_FINETUNE: dict = {"head_epochs": 10, "head_lr": 0.01, "freeze_batchnorm": True}


def training_seed(train_cfg: dict, fold: int, size: int, replicate: int = 0) -> int:
    """The seed of one training (initial weights, batch order, augmentation):
    train.seed + 1000 * fold + size, plus 1,000,000 per replicate."""
    return int(train_cfg["seed"]) + 1000 * fold + size + 1_000_000 * replicate


def fill_train_defaults(train_cfg: dict | None) -> dict:
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


def trains_on_cpu(accelerator: str) -> bool:
    """Whether train.accelerator `accelerator` trains on the CPU here (no GPU visible, or cpu)."""
    return accelerator == "cpu" or not torch.cuda.is_available()


def training_device(accelerator: str) -> torch.device:
    """cuda when `accelerator` is auto or gpu and a GPU is visible, else cpu."""
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise FewcellsError("train.accelerator: 'gpu' was asked for but no GPU is visible")
    if trains_on_cpu(accelerator):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())
