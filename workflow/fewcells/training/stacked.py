"""The stacked engines: many paper CNNs trained side by side as one model, in one job.

train.engine stacked trains every fold of one training size in a job; stacked_sweep every
fold of every training size of the experiment in a single job (the paper's 200 networks in
one process and one set of kernels per step, which is what a GPU needs: many processes
sharing one GPU are each bound by the CPU time they spend launching small kernels).

The networks' parameters are stacked along a new first dimension, so each layer is one grouped
convolution or batched matrix product whatever their number; the images are resident on the
device and augmented there. Each network keeps its own protocol exactly as in the per-fold
engine (fewcells.training.run): the same initial weights, the same batch order (a
RandomSampler-equivalent shuffle seeded per network), the same augmentation draws (a generator
per network seeded as in CellClassifier), an optimizer that acts element-wise on each network's
parameters, and its own early stopping and best-val-loss checkpoint. Training sets of different
sizes have epochs of different lengths: every network takes one step per global step (a short
last batch is padded, the padding weighted zero) and is validated when its own epoch ends;
networks that have stopped are taken out of the stack. So the results are those of the per-fold
engine up to floating-point summation order.

The loop is plain PyTorch rather than a Lightning Trainer: with 2-step epochs (10 training
images) the Trainer's per-epoch work would cost more than the training itself. The outputs of
each network are the per-fold engine's files (model.ckpt is a Lightning checkpoint of a
CellClassifier), written atomically network by network at the end.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fewcells.atomic import atomic_path
from fewcells.contracts import read_classes
from fewcells.errors import FewcellsError
from fewcells.training.callbacks import EpochHistory
from fewcells.training.datamodule import CellDataModule, fold_data
from fewcells.training.memory import keep_freed_memory, unfilled_new_memory
from fewcells.training.models import to_model_input
from fewcells.training.module import CellClassifier
from fewcells.training.outputs import process_costs, write_outputs, write_train_info
from fewcells.training.protocol import (
    OPTIMIZERS,
    fill_train_defaults,
    training_device,
    training_seed,
)
from fewcells.training.stacked_networks import StackData, StackedNetworks, StackState, validate

CHECK_EVERY_STEPS = 10  # how often the loop waits for the device to learn which networks stopped
PROGRESS_EVERY_SECONDS = 30


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


class StackedFit:
    """The training loop of K stacked networks, each with its own epochs and early stopping.

    Networks are referred to by their index in the job's list of trainings ("network k") and,
    while they train, by their position in the shrinking stack.
    """

    def __init__(
        self,
        model: StackedNetworks,
        data: StackData,
        augment: nn.Module,
        seeds: list[int],
        cfg: dict,
        label: str,
    ) -> None:
        self.model, self.data, self.augment, self.cfg, self.label = model, data, augment, cfg, label
        self.device = data.images.device
        self.batch_size = int(cfg["batch_size"])
        self.shufflers = [torch.Generator().manual_seed(seed) for seed in seeds]
        self.augmenters = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
        self.optimizer = OPTIMIZERS[cfg["optimizer"]](model.parameters(), cfg)
        self.state = StackState(model, int(cfg["patience"]), int(cfg["max_epochs"]))
        k = len(model)
        self.networks = np.arange(k)  # network index of each stack position
        self.steps_per_epoch = -(-data.n_train // self.batch_size)
        self.step = np.zeros(k, dtype=np.int64)  # step within the current epoch
        self.epoch = np.zeros(k, dtype=np.int64)  # epochs ended
        self.orders = torch.zeros_like(data.train_rows)  # this epoch's order, per network
        self.loss_sum = torch.zeros(k, device=self.device)  # this epoch's summed image losses
        self.pending: list[tuple[np.ndarray, np.ndarray, torch.Tensor]] = []
        self.rows: list[list[tuple[int, float, float, float]]] = [[] for _ in range(k)]
        self.finished: dict[int, dict] = {}

    def run(self) -> float:
        """Train until every network has stopped; returns the seconds it took."""
        started = last_report = time.perf_counter()
        global_step = 0
        while len(self.networks):
            self._shuffle(np.flatnonzero(self.step == 0))
            self._train_step()
            self.step += 1
            ended = np.flatnonzero(self.step == self.steps_per_epoch[self.networks])
            if len(ended):
                self._end_epochs(ended)
            global_step += 1
            if global_step % CHECK_EVERY_STEPS == 0 or len(ended) == len(self.networks):
                stopped = self._take_out_stopped()
                now = time.perf_counter()
                if stopped or now - last_report > PROGRESS_EVERY_SECONDS:
                    last_report = now
                    print(
                        f"{self.label}: {len(self.finished)} of {len(self.rows)} networks "
                        f"finished, {len(self.networks)} training (step {global_step}, "
                        f"{now - started:.0f} s)",
                        file=sys.stderr,
                    )
        return time.perf_counter() - started

    def history(self, k: int, fold: int, size: int) -> EpochHistory:
        """Network k's history (epochs up to the one it stopped at), as the per-fold engine's
        EpochHistory records it."""
        history = EpochHistory(fold, size)
        history.rows = [
            {
                "fold": fold,
                "size": size,
                "replicate": 0,
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_accuracy": val_accuracy,
                "lr": self.cfg["lr"],
            }
            for epoch, train_loss, val_loss, val_accuracy in self.rows[k]
            if epoch <= self.finished[k]["epochs_run"]
        ]
        return history

    def _shuffle(self, positions: np.ndarray) -> None:
        """New epoch orders for the networks at `positions`, as RandomSampler draws them (one
        randperm for the epoch and one for its empty remainder)."""
        if not len(positions):
            return
        orders = torch.zeros((len(positions), self.orders.shape[1]), dtype=torch.int64)
        for i, p in enumerate(positions):
            n, shuffler = int(self.data.n_train[p]), self.shufflers[self.networks[p]]
            orders[i, :n] = torch.randperm(n, generator=shuffler)
            torch.randperm(n, generator=shuffler)
        self.orders[torch.from_numpy(positions).to(self.device)] = orders.to(self.device)

    def _train_step(self) -> None:
        """One step of every network in the stack, on its next batch."""
        b = self.batch_size
        columns = self.step[:, None] * b + np.arange(b)
        valid = columns < self.data.n_train[:, None]
        counts = valid.sum(axis=1)
        columns = torch.from_numpy(np.where(valid, columns, 0)).to(self.device)
        picked = self.orders.gather(1, columns)
        rows = self.data.train_rows.gather(1, picked)
        targets = self.data.train_targets.gather(1, picked)
        x = to_model_input(self.data.images[rows.flatten()])
        draws = [
            self.augment.sample(int(c), x.shape[1:], self.augmenters[k], self.device)
            for c, k in zip(counts, self.networks, strict=True)
        ]
        merged = {key: torch.cat([_padded_draw(d[key], b) for d in draws]) for key in draws[0]}
        x = self.augment.apply(x, merged).reshape(len(rows), b, *x.shape[1:])
        self.model.train()
        logits = self.model(x.contiguous())
        losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
        valid_on_device = torch.from_numpy(valid).to(self.device)
        summed = torch.where(valid_on_device, losses.view(len(rows), b), 0.0).sum(dim=1)
        counts_on_device = torch.from_numpy(counts).to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        (summed / counts_on_device).sum().backward()
        self.optimizer.step()
        self.loss_sum += summed.detach()

    def _end_epochs(self, ended: np.ndarray) -> None:
        """Validate the networks at `ended`, whose epochs just ended; early stopping."""
        self.epoch[ended] += 1
        self.step[ended] = 0
        positions = torch.from_numpy(ended).to(self.device)
        val_loss, val_accuracy = validate(self.model, self.data, ended)
        train_loss = self.loss_sum[positions] / torch.from_numpy(self.data.n_train[ended]).to(
            self.device
        )
        self.loss_sum[positions] = 0.0
        epochs = torch.from_numpy(self.epoch[ended]).to(self.device)
        self.state.update(self.model, positions, epochs, val_loss)
        values = torch.stack((train_loss, val_loss, val_accuracy))
        self.pending.append((self.networks[ended], self.epoch[ended], values))

    def _take_out_stopped(self) -> int:
        """Record the networks that stopped and remove them from the stack; how many."""
        active = self.state.active.cpu().numpy()
        stopped = np.flatnonzero(~active)
        if self.pending:
            values = torch.cat([v for _, _, v in self.pending], dim=1).cpu().numpy()
            networks = np.concatenate([n for n, _, _ in self.pending])
            epochs = np.concatenate([e for _, e, _ in self.pending])
            for column, (k, epoch) in enumerate(zip(networks, epochs, strict=True)):
                self.rows[k].append((int(epoch), *map(float, values[:, column])))
            self.pending = []
        if not len(stopped):
            return 0
        state = self.state
        for p in stopped:
            self.finished[int(self.networks[p])] = {
                "epochs_run": int(state.stop_epoch[p]),
                "best_epoch": int(state.best_epoch[p]),
                "best_val_loss": float(state.best_loss[p]),
                "weights": {
                    name: best[p].detach().cpu().clone()
                    for name, best in zip(self.model.names, state.best_params, strict=True)
                },
            }
        kept = np.flatnonzero(active)
        index = torch.from_numpy(kept).to(self.device)
        old_parameters = list(self.model.parameters())
        self.model.keep(index)
        self.optimizer = _kept_optimizer(
            self.optimizer, old_parameters, self.model, index, self.cfg
        )
        state.keep(index)
        self.data.keep(kept)
        self.orders, self.loss_sum = self.orders[index], self.loss_sum[index]
        self.networks, self.step, self.epoch = (
            self.networks[kept],
            self.step[kept],
            self.epoch[kept],
        )
        return len(stopped)


def _padded_draw(draw: torch.Tensor, batch_size: int) -> torch.Tensor:
    """One network's augmentation draws for a short batch, zero-padded to the batch size."""
    if len(draw) == batch_size:
        return draw
    return torch.cat((draw, draw.new_zeros((batch_size - len(draw), *draw.shape[1:]))))


def _kept_optimizer(
    optimizer: torch.optim.Optimizer,
    old_parameters: list[nn.Parameter],
    model: StackedNetworks,
    index: torch.Tensor,
    cfg: dict,
) -> torch.optim.Optimizer:
    """A new optimizer over `model`'s parameters carrying the kept networks' state (running
    averages, momenta; the step count, shared by all networks, as it is)."""
    kept = OPTIMIZERS[cfg["optimizer"]](model.parameters(), cfg)
    for old, new in zip(old_parameters, model.parameters(), strict=True):
        kept.state[new] = {
            key: value[index] if torch.is_tensor(value) and value.shape == old.shape else value
            for key, value in optimizer.state.get(old, {}).items()
        }
    return kept


def run_stacked_training(
    store_dir: str | os.PathLike,
    folds_csv: str | os.PathLike,
    classes_json: str | os.PathLike,
    folds: list[int],
    sizes: list[int],
    train_cfg: dict,
    model_cfg: dict,
    out_root: str | os.PathLike,
    *,
    image_size: int,
    engine: str = "stacked",
) -> list[dict]:
    """Train a network for every fold in `folds` and size in `sizes`, all at once; write
    OUT_ROOT/n{size}/fold{k}/ for each. Returns the train_info dicts (also in each
    train_info.json), size by size, fold by fold.
    """
    started = time.perf_counter()
    cfg = fill_train_defaults(train_cfg)
    if cfg["precision"] != "32-true":
        raise FewcellsError(f"train.engine: {engine!r} trains in precision '32-true' only")
    class_names, _ = read_classes(classes_json)
    torch.set_num_threads(int(cfg["threads"]))
    device = training_device(cfg["accelerator"])
    trainings = [(fold, size) for size in sizes for fold in folds]
    seeds = [training_seed(cfg, fold, size) for fold, size in trainings]
    data = [
        fold_data(
            store_dir, folds_csv, classes_json, fold, size, cfg, seed, image_size, read_images=False
        )
        for (fold, size), seed in zip(trainings, seeds, strict=True)
    ]
    with _deterministic(device):
        # The initial weights of network k: the per-fold engine seeds everything, then builds.
        modules = []
        for seed in seeds:
            L.seed_everything(seed, workers=True, verbose=False)
            modules.append(
                CellClassifier(model_cfg, len(class_names), image_size, cfg, class_names, seed)
            )
        model = StackedNetworks([m.model for m in modules]).to(device)
        label = f"{engine}, sizes {_ranges(sizes)} x folds {_ranges(folds)}"
        fit = StackedFit(model, StackData(data, device), modules[0].augment, seeds, cfg, label)
        fit_seconds = fit.run()
        useful_steps = sum(
            int(fit.finished[k]["epochs_run"]) * len(d.role_positions("train"))
            for k, d in enumerate(data)
        )
        job = {
            "engine": engine,
            "networks_in_job": len(trainings),
            "fit_seconds": fit_seconds,
            "image_steps_per_second": useful_steps / fit_seconds,
        }
        infos = []
        for k, ((fold, size), seed) in enumerate(zip(trainings, seeds, strict=True)):
            result = fit.finished[k]
            modules[k].model.load_state_dict(result["weights"])
            history = fit.history(k, fold, size)
            info = {
                "fold": fold,
                "size": size,
                "replicate": 0,
                "n_train_images": int((data[k].fold_frame["role"] == "train").sum()),
                "epochs_run": result["epochs_run"],
                "best_epoch": result["best_epoch"],
                "best_val_loss": result["best_val_loss"],
                "seconds": time.perf_counter() - started,
                **job,
                **process_costs(device, seed, modules[k].model),
            }
            print(f"{history.describe()} ({engine}, {fit_seconds:.0f} s)", file=sys.stderr)
            out_dir = Path(out_root) / f"n{size}" / f"fold{fold}"
            _write_network(out_dir, modules[k], data[k], class_names, history, info, device)
            infos.append(info)
    return infos


def _ranges(values: list[int]) -> str:
    """'10-200' for several values, '10' for one."""
    return f"{min(values)}-{max(values)}" if len(values) > 1 else str(values[0])


@torch.no_grad()
def _write_network(
    out_dir: Path,
    module: CellClassifier,
    data: CellDataModule,
    class_names: list[str],
    history: EpochHistory,
    info: dict,
    device: torch.device,
) -> None:
    """One network's model.ckpt, history, predictions, embeddings and train_info, atomically."""
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
        info |= write_outputs(tmp, data, predictions, class_names, history)
        write_train_info(info, tmp)
