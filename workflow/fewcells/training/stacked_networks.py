"""K paper CNNs as one model for the stacked engines (fewcells.training.stacked): their
stacked parameters, their early-stopping state, their images on the device and their
validation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import stack_module_state

from fewcells.errors import FewcellsError
from fewcells.training.datamodule import EVAL_BATCH_SIZE, CellDataModule
from fewcells.training.models import PaperCNN, to_model_input

VALIDATION_IMAGES_PER_PASS = 1024  # networks x images validated in one forward pass, at most


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

    def forward(self, x: torch.Tensor, params: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits of the stacked networks, or of the networks whose stacked parameters
        (in self.names order, e.g. from subset()) are `params`."""
        named = dict(zip(self.names, self.stacked if params is None else params, strict=True))
        k, b = x.shape[:2]
        h = x.transpose(0, 1).reshape(b, -1, *x.shape[3:])  # (B, K*C, H, W)
        for kind, prefix in self.layers:
            if kind == "Conv2d":
                weight, bias = named[f"{prefix}.weight"], named[f"{prefix}.bias"]
                h = F.conv2d(h, weight.flatten(0, 1), bias.flatten(), groups=k)
            elif kind == "MaxPool2d":
                h = F.max_pool2d(h, 2)
            elif kind == "ReLU":
                h = F.relu(h)
            else:  # Flatten, per network: (K, B, C*h*w)
                h = h.reshape(b, k, -1).transpose(0, 1)
        h = torch.baddbmm(named["hidden.bias"][:, None], h, named["hidden.weight"].mT)
        return torch.baddbmm(
            named["classifier.bias"][:, None], F.relu(h), named["classifier.weight"].mT
        )

    def subset(self, positions: torch.Tensor) -> list[torch.Tensor]:
        """The stacked parameters of the networks at `positions` (copies)."""
        return [p[positions] for p in self.stacked]

    def keep(self, positions: torch.Tensor) -> None:
        """Keep only the networks at `positions`, in that order."""
        for i, p in enumerate(self.stacked):
            self.stacked[i] = nn.Parameter(p.detach()[positions])


class StackState:
    """Early stopping and best weights of the networks in the stack (device tensors, no syncs).

    Mirrors Lightning's EarlyStopping (mode min, min_delta 0) and ModelCheckpoint (save when
    strictly better): a network stops once `patience` epochs in a row brought no improvement,
    or after `max_epochs`; the weights of its best epoch are kept.
    """

    def __init__(self, model: StackedNetworks, patience: int, max_epochs: int) -> None:
        k, device = len(model), model.stacked[0].device
        self.patience, self.max_epochs = patience, max_epochs
        self.best_loss = torch.full((k,), float("inf"), device=device)
        self.best_epoch = torch.zeros(k, dtype=torch.int64, device=device)
        self.wait = torch.zeros(k, dtype=torch.int64, device=device)
        self.active = torch.ones(k, dtype=torch.bool, device=device)
        self.stop_epoch = torch.zeros(k, dtype=torch.int64, device=device)
        self.best_params = [p.detach().clone() for p in model.stacked]

    @torch.no_grad()
    def update(
        self,
        model: StackedNetworks,
        positions: torch.Tensor,
        epochs: torch.Tensor,
        val_loss: torch.Tensor,
    ) -> None:
        """Record the epochs `epochs` (1-based) that the networks at `positions` just ended."""
        active = self.active[positions]
        improved = active & (val_loss < self.best_loss[positions])
        self.best_loss[positions] = torch.where(improved, val_loss, self.best_loss[positions])
        self.best_epoch[positions] = torch.where(improved, epochs, self.best_epoch[positions])
        for best, current in zip(self.best_params, model.stacked, strict=True):
            mask = improved.view(-1, *([1] * (best.dim() - 1)))
            best[positions] = torch.where(mask, current[positions], best[positions])
        wait = torch.where(improved, 0, self.wait[positions] + active.long())
        self.wait[positions] = wait
        self.stop_epoch[positions] = torch.where(active, epochs, self.stop_epoch[positions])
        self.active[positions] = active & (wait < self.patience) & (epochs < self.max_epochs)

    def keep(self, positions: torch.Tensor) -> None:
        """Keep only the networks at `positions`, in that order."""
        for name in ("best_loss", "best_epoch", "wait", "active", "stop_epoch"):
            setattr(self, name, getattr(self, name)[positions])
        self.best_params = [best[positions] for best in self.best_params]


class StackData:
    """Each network's training and validation images as positions into one device tensor that
    holds every store image they use once; per-network rows padded to the longest set."""

    def __init__(self, data: list[CellDataModule], device: torch.device) -> None:
        train, val = [], []  # (store rows, targets) per network
        for d in data:
            frame = d.read_fold()
            for role, sets in (("train", train), ("val", val)):
                part = frame[frame["role"] == role]
                positions = d.role_positions(role)
                sets.append(
                    (part["store_row"].to_numpy()[positions], part["target"].to_numpy()[positions])
                )
        used = np.unique(np.concatenate([rows for rows, _ in train + val]))
        store = data[0].store_images
        self.images = torch.from_numpy(np.ascontiguousarray(store[used])).to(device)
        self.n_train = np.array([len(rows) for rows, _ in train])
        self.n_val = np.array([len(rows) for rows, _ in val])
        self.train_rows, self.train_targets = padded_positions(train, used, device)
        self.val_rows, self.val_targets = padded_positions(val, used, device)

    def keep(self, positions: np.ndarray) -> None:
        """Keep only the networks at `positions`, in that order."""
        index = torch.from_numpy(positions).to(self.train_rows.device)
        self.n_train, self.n_val = self.n_train[positions], self.n_val[positions]
        for name in ("train_rows", "train_targets", "val_rows", "val_targets"):
            setattr(self, name, getattr(self, name)[index])


def padded_positions(
    sets: list[tuple[np.ndarray, np.ndarray]], used: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, longest) positions into `used` and targets, zero-padded."""
    rows = np.zeros((len(sets), max(len(r) for r, _ in sets)), dtype=np.int64)
    targets = np.zeros_like(rows)
    for k, (store_rows, set_targets) in enumerate(sets):
        rows[k, : len(store_rows)] = np.searchsorted(used, store_rows)
        targets[k, : len(set_targets)] = set_targets
    return torch.from_numpy(rows).to(device), torch.from_numpy(targets).to(device)


@torch.no_grad()
def validate(
    model: StackedNetworks, data: StackData, positions: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation loss and accuracy (E,) of the networks at stack positions `positions`."""
    device = data.images.device
    n_val = data.n_val[positions]
    width = int(n_val.max())
    per_pass = max(1, VALIDATION_IMAGES_PER_PASS // min(width, EVAL_BATCH_SIZE))
    loss, correct = [], []
    model.eval()
    for first in range(0, len(positions), per_pass):
        chosen = torch.from_numpy(positions[first : first + per_pass]).to(device)
        params = model.subset(chosen)
        valid = torch.arange(width, device=device) < torch.from_numpy(
            n_val[first : first + per_pass, None]
        ).to(device)
        part_loss = torch.zeros(len(chosen), device=device)
        part_correct = torch.zeros(len(chosen), device=device)
        for start in range(0, width, EVAL_BATCH_SIZE):
            rows = data.val_rows[chosen, start : start + EVAL_BATCH_SIZE]
            targets = data.val_targets[chosen, start : start + EVAL_BATCH_SIZE]
            mask = valid[:, start : start + EVAL_BATCH_SIZE]
            x = to_model_input(data.images[rows.flatten()])
            logits = model(x.reshape(*rows.shape, *x.shape[1:]), params).float()
            losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
            part_loss += torch.where(mask, losses.view(rows.shape), 0.0).sum(dim=1)
            part_correct += ((logits.argmax(dim=2) == targets) & mask).sum(dim=1)
        loss.append(part_loss)
        correct.append(part_correct)
    counts = torch.from_numpy(n_val).to(device)
    return torch.cat(loss) / counts, torch.cat(correct) / counts
