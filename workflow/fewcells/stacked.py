"""The fold-stacked engine (train.engine: stacked): every fold of one training size in one job.

The folds' paper CNNs are trained side by side as one model (parameters stacked along a new
first dimension; one grouped convolution per layer instead of one small kernel per fold),
with the images resident on the device and augmented there. Each fold keeps its own
protocol exactly as in the per-fold engine (train.py): the same initial weights, the same
batch order (a RandomSampler-equivalent shuffle seeded per fold), the same augmentation draws
(a generator per fold seeded as in CellClassifier), an optimizer that acts element-wise on
each fold's parameters, and its own early stopping and best-val-loss checkpoint. So the
per-fold results are those of the per-fold engine up to floating-point summation order.

The loop is plain PyTorch rather than a Lightning Trainer: with 2-step epochs (10 training
images) the Trainer's per-epoch work would cost more than the training itself. The outputs of
each fold are the per-fold engine's files (model.ckpt is a Lightning checkpoint of a
CellClassifier), written atomically fold by fold.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import stack_module_state

from fewcells.atomic import atomic_path
from fewcells.errors import FewcellsError
from fewcells.model import PaperCNN, to_model_input
from fewcells.runtime import keep_freed_memory, unfilled_new_memory
from fewcells.train import (
    EVAL_BATCH_SIZE,
    OPTIMIZERS,
    PROGRESS_EVERY_EPOCHS,
    CellClassifier,
    CellDataModule,
    EpochHistory,
    _device_name,
    _write_outputs,
    fold_data,
    read_class_names,
    train_config,
    trains_on_cpu,
)


def fold_seed(train_cfg: dict, fold: int, size: int) -> int:
    """The seed of one (fold, size) training, as in the per-fold engine."""
    return int(train_cfg["seed"]) + 1000 * fold + size


def training_device(accelerator: str) -> torch.device:
    """cuda when `accelerator` is auto or gpu and a GPU is visible, else cpu."""
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise FewcellsError("train.accelerator: 'gpu' was asked for but no GPU is visible")
    if trains_on_cpu(accelerator):
        return torch.device("cpu")
    return torch.device("cuda", torch.cuda.current_device())


class StackedNetworks(nn.Module):
    """K paper CNNs evaluated as one: parameters stacked along a new dim 0.

    forward takes (K, B, C, H, W) and returns (K, B, n_classes); network k sees only x[k].
    The K networks' images travel as channel blocks of one batch (B, K*C, H, W): every
    convolution is one grouped convolution (groups=K), pooling and ReLU act per channel, and
    the dense layers are batched matrix products - a handful of kernels per layer whatever K
    is, which is what makes many small networks cheap on a GPU.
    """

    def __init__(self, networks: list[nn.Module]) -> None:
        super().__init__()
        if not all(isinstance(network, PaperCNN) for network in networks):
            kinds = sorted({type(network).__name__ for network in networks})
            raise FewcellsError(
                f"train.engine: 'stacked' trains the paper CNN only, not {', '.join(kinds)} "
                "(BatchNorm statistics cannot be stacked) - use engine 'per_fold'"
            )
        stacked, _ = stack_module_state(networks)
        self.names = list(stacked)
        self.stacked = nn.ParameterList(nn.Parameter(stacked[name]) for name in self.names)
        template = networks[0]
        self.layers = [  # (kind, parameter prefix) in forward order
            (type(module).__name__, f"features.{index}")
            for index, module in enumerate(template.features)
        ]

    def __len__(self) -> int:
        return len(self.stacked[0])

    def _parameter(self, name: str) -> torch.Tensor:
        return self.stacked[self.names.index(name)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, b = x.shape[:2]
        h = x.transpose(0, 1).reshape(b, -1, *x.shape[3:])  # (B, K*C, H, W)
        for kind, prefix in self.layers:
            if kind == "Conv2d":
                weight = self._parameter(f"{prefix}.weight")
                bias = self._parameter(f"{prefix}.bias")
                h = F.conv2d(h, weight.flatten(0, 1), bias.flatten(), groups=k)
            elif kind == "MaxPool2d":
                h = F.max_pool2d(h, 2)
            elif kind == "ReLU":
                h = F.relu(h)
            else:  # Flatten, per network: (K, B, C*h*w)
                h = h.reshape(b, k, -1).transpose(0, 1)
        h = torch.baddbmm(
            self._parameter("hidden.bias")[:, None], h, self._parameter("hidden.weight").mT
        )
        return torch.baddbmm(
            self._parameter("classifier.bias")[:, None],
            F.relu(h),
            self._parameter("classifier.weight").mT,
        )

    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        """One state_dict per network, detached copies on the CPU."""
        return [
            {
                name: p[k].detach().cpu().clone()
                for name, p in zip(self.names, self.stacked, strict=True)
            }
            for k in range(len(self))
        ]


class FoldStackState:
    """Early stopping and best-weights bookkeeping for K networks (device tensors, no syncs).

    Mirrors Lightning's EarlyStopping (mode min, min_delta 0) and ModelCheckpoint (save when
    strictly better): a network stops once `patience` epochs in a row brought no improvement;
    the weights of its best epoch are kept.
    """

    def __init__(self, model: StackedNetworks, patience: int) -> None:
        k, device = len(model), model.stacked[0].device
        self.patience = patience
        self.best_loss = torch.full((k,), float("inf"), device=device)
        self.best_epoch = torch.zeros(k, dtype=torch.int64, device=device)
        self.wait = torch.zeros(k, dtype=torch.int64, device=device)
        self.active = torch.ones(k, dtype=torch.bool, device=device)
        self.stop_epoch = torch.zeros(k, dtype=torch.int64, device=device)
        self.best_params = [p.detach().clone() for p in model.stacked]

    @torch.no_grad()
    def update(self, model: StackedNetworks, epoch: int, val_loss: torch.Tensor) -> None:
        """Record epoch `epoch` (1-based) for the networks still training."""
        improved = self.active & (val_loss < self.best_loss)
        self.best_loss = torch.where(improved, val_loss, self.best_loss)
        self.best_epoch = torch.where(improved, epoch, self.best_epoch)
        for best, current in zip(self.best_params, model.stacked, strict=True):
            mask = improved.view(-1, *([1] * (best.dim() - 1)))
            best.copy_(torch.where(mask, current, best))
        self.wait = torch.where(improved, 0, self.wait + self.active.long())
        self.stop_epoch = torch.where(self.active, epoch, self.stop_epoch)
        self.active = self.active & (self.wait < self.patience)


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms (as Lightning's deterministic=True), restored afterwards."""
    previous = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    keep_freed_memory()
    try:
        with unfilled_new_memory():
            yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]


def _equal_lengths(data: list[CellDataModule], role: str) -> int:
    lengths = {d.fold: len(d.splits[role]) for d in data}
    if len(set(lengths.values())) != 1:
        raise FewcellsError(
            f"train.engine: 'stacked' needs the same number of {role} images in every fold; "
            f"size {data[0].size} has {lengths} (balance_to or uneven folds) - use 'per_fold'"
        )
    return next(iter(lengths.values()))


class FoldStackData:
    """The folds' train and validation images on the device, as positions into one tensor."""

    def __init__(self, data: list[CellDataModule], device: torch.device) -> None:
        self.n_train = _equal_lengths(data, "train")
        self.n_val = _equal_lengths(data, "val")
        images, train_rows, val_rows, offset = [], [], [], 0
        for d in data:
            train, val = d.splits["train"], d.splits["val"]
            images += [train.images, val.images]
            train_rows.append(torch.from_numpy(train.rows) + offset)
            offset += len(train.images)
            val_rows.append(torch.from_numpy(val.rows) + offset)
            offset += len(val.images)
        self.images = torch.cat(images).to(device)
        self.train_rows = torch.stack(train_rows).to(device)  # (K, n_train)
        self.train_targets = torch.stack([d.splits["train"].targets for d in data]).to(device)
        self.val_rows = torch.stack(val_rows).to(device)
        self.val_targets = torch.stack([d.splits["val"].targets for d in data]).to(device)


def _batch(stack: FoldStackData, rows: torch.Tensor) -> torch.Tensor:
    """Float images (K, B, C, H, W) in [0, 1] for store positions `rows` (K, B)."""
    k, b = rows.shape
    flat = to_model_input(stack.images[rows.reshape(-1)])
    return flat.reshape(k, b, *flat.shape[1:])


def run_stacked_training(
    store_dir: str | os.PathLike,
    folds_csv: str | os.PathLike,
    classes_json: str | os.PathLike,
    folds: list[int],
    size: int,
    train_cfg: dict,
    model_cfg: dict,
    out_root: str | os.PathLike,
    *,
    image_size: int,
) -> list[dict]:
    """Train `size`-image networks for all `folds` at once; write OUT_ROOT/fold{k}/ per fold.

    Returns the train_info dicts (also in each fold's train_info.json).
    """
    started = time.perf_counter()
    cfg = train_config(train_cfg)
    if cfg["precision"] != "32-true":
        raise FewcellsError("train.engine: 'stacked' trains in precision '32-true' only")
    class_names = read_class_names(classes_json)
    torch.set_num_threads(int(cfg["threads"]))
    device = training_device(cfg["accelerator"])
    seeds = [fold_seed(cfg, fold, size) for fold in folds]
    batch_size = int(cfg["batch_size"])
    data = [
        fold_data(store_dir, folds_csv, classes_json, fold, size, cfg, seed, image_size)
        for fold, seed in zip(folds, seeds, strict=True)
    ]

    with _deterministic(device):
        # The initial weights of fold k: the per-fold engine seeds everything, then builds.
        modules = []
        for seed in seeds:
            L.seed_everything(seed, workers=True, verbose=False)
            modules.append(
                CellClassifier(model_cfg, len(class_names), image_size, cfg, class_names, seed)
            )
        model = StackedNetworks([m.model for m in modules]).to(device)
        stack = FoldStackData(data, device)
        augment = modules[0].augment
        shufflers = [torch.Generator().manual_seed(seed) for seed in seeds]
        augmenters = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]
        optimizer = OPTIMIZERS[cfg["optimizer"]](model.parameters(), cfg)
        state = FoldStackState(model, int(cfg["patience"]))
        histories = [EpochHistory(fold, size) for fold in folds]
        epoch_rows: list[torch.Tensor] = []
        fit_started = time.perf_counter()
        for epoch in range(1, int(cfg["max_epochs"]) + 1):
            train_loss = _train_epoch(
                model, optimizer, stack, augment, shufflers, augmenters, batch_size
            )
            val_loss, val_accuracy = _validate(model, stack)
            state.update(model, epoch, val_loss)
            epoch_rows.append(torch.stack((train_loss, val_loss, val_accuracy)))
            if epoch == 1 or epoch % PROGRESS_EVERY_EPOCHS == 0 or not state.active.any():
                running = int(state.active.sum())
                print(
                    f"size {size}: epoch {epoch}, {running} of {len(folds)} folds training, "
                    f"mean val_loss {float(val_loss.mean()):.4f} "
                    f"({time.perf_counter() - fit_started:.0f} s)",
                    file=sys.stderr,
                )
                if running == 0:
                    break
        fit_seconds = time.perf_counter() - fit_started
        lr = optimizer.param_groups[0]["lr"]
        rows = torch.stack(epoch_rows).cpu().numpy()  # (epochs, 3, K)
        stop_epochs = state.stop_epoch.cpu().tolist()
        for k, history in enumerate(histories):
            history.rows = [
                {
                    "fold": history.fold,
                    "size": size,
                    "epoch": e + 1,
                    "train_loss": float(rows[e, 0, k]),
                    "val_loss": float(rows[e, 1, k]),
                    "val_accuracy": float(rows[e, 2, k]),
                    "lr": lr,
                }
                for e in range(stop_epochs[k])
            ]
        for params, best in zip(model.stacked, state.best_params, strict=True):
            params.data.copy_(best)
        useful_steps = sum(len(h.rows) for h in histories) * stack.n_train
        infos = []
        best_weights = model.state_dicts()
        for k, (fold, seed) in enumerate(zip(folds, seeds, strict=True)):
            modules[k].model.load_state_dict(best_weights[k])
            info = {
                "engine": "stacked",
                "folds_in_job": len(folds),
                "fold": fold,
                "size": size,
                "n_train_images": int((data[k].fold_frame["role"] == "train").sum()),
                "epochs_run": stop_epochs[k],
                "best_epoch": int(state.best_epoch[k]),
                "best_val_loss": float(state.best_loss[k]),
                "seconds": time.perf_counter() - started,
                "fit_seconds": fit_seconds,
                "image_steps_per_second": useful_steps / fit_seconds,
                "device": _device_name(device),
                "threads": torch.get_num_threads(),
                "seed": seed,
                "n_parameters": sum(p.numel() for p in modules[k].model.parameters()),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
            print(f"{histories[k].describe()} (stacked, {fit_seconds:.0f} s)", file=sys.stderr)
            _write_fold(
                Path(out_root) / f"fold{fold}",
                modules[k],
                data[k],
                class_names,
                histories[k],
                info,
                device,
            )
            infos.append(info)
    return infos


def _train_epoch(
    model: StackedNetworks,
    optimizer: torch.optim.Optimizer,
    stack: FoldStackData,
    augment: nn.Module,
    shufflers: list[torch.Generator],
    augmenters: list[torch.Generator],
    batch_size: int,
) -> torch.Tensor:
    """One epoch of every network; returns each network's mean training loss (K,)."""
    n = stack.n_train
    # RandomSampler draws randperm(n) for the epoch and one more for the (empty) remainder.
    orders = []
    for shuffler in shufflers:
        orders.append(torch.randperm(n, generator=shuffler))
        torch.randperm(n, generator=shuffler)
    order = torch.stack(orders).to(stack.images.device)
    positions = stack.train_rows.gather(1, order)
    targets = stack.train_targets.gather(1, order)
    total = torch.zeros(len(model), device=stack.images.device)
    model.train()
    for start in range(0, n, batch_size):
        rows, y = positions[:, start : start + batch_size], targets[:, start : start + batch_size]
        x = _batch(stack, rows)
        k, b = rows.shape
        draws = [augment.sample(b, x.shape[2:], g, x.device) for g in augmenters]
        merged = {key: torch.cat([d[key] for d in draws]) for key in draws[0]}
        x = augment.apply(x.reshape(k * b, *x.shape[2:]), merged).reshape(x.shape)
        logits = model(x.contiguous())
        losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        losses = losses.view(k, b).mean(dim=1)
        optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        optimizer.step()
        total += losses.detach() * b
    return total / n


@torch.no_grad()
def _validate(model: StackedNetworks, stack: FoldStackData) -> tuple[torch.Tensor, torch.Tensor]:
    """Each network's validation loss and accuracy (K,), in batches as the per-fold engine."""
    model.eval()
    loss = torch.zeros(len(model), device=stack.images.device)
    correct = torch.zeros(len(model), device=stack.images.device)
    for start in range(0, stack.n_val, EVAL_BATCH_SIZE):
        rows = stack.val_rows[:, start : start + EVAL_BATCH_SIZE]
        y = stack.val_targets[:, start : start + EVAL_BATCH_SIZE]
        logits = model(_batch(stack, rows)).float()
        k, b = rows.shape
        batch_loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        loss += batch_loss.view(k, b).mean(dim=1) * b
        correct += (logits.argmax(dim=2) == y).float().sum(dim=1)
    return loss / stack.n_val, correct / stack.n_val


@torch.no_grad()
def _write_fold(
    out_dir: Path,
    module: CellClassifier,
    data: CellDataModule,
    class_names: list[str],
    history: EpochHistory,
    info: dict,
    device: torch.device,
) -> None:
    """One fold's model.ckpt, history, predictions, embeddings and train_info, atomically."""
    module = module.to(device).eval()
    predictions = []
    for images, targets in data.predict_dataloader():
        predictions.append(module.predict_step((images.to(device), targets), 0))
    with atomic_path(out_dir, directory=True) as tmp:
        checkpoint = {
            "epoch": info["best_epoch"] - 1,
            "global_step": 0,
            "pytorch-lightning_version": L.__version__,
            "state_dict": {k: v.cpu() for k, v in module.state_dict().items()},
            "hparams_name": "kwargs",
            "hyper_parameters": dict(module.hparams),
        }
        torch.save(checkpoint, tmp / "model.ckpt")
        _write_outputs(tmp, data, predictions, class_names, history)
        (tmp / "train_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
