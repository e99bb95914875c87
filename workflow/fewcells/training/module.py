"""The LightningModule: a network trained with cross-entropy on batches augmented on the
device, with the phases of transfer learning (head only, then fine-tuning)."""

from __future__ import annotations

import os

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from fewcells.training.augment import BatchAugment
from fewcells.training.kernels import loader
from fewcells.training.models import PaperCNN, build_model, to_model_input
from fewcells.training.protocol import OPTIMIZERS, fill_train_defaults, trains_on_cpu

HEAD_PHASE, FINETUNE_PHASE = "head", "finetune"
BATCHNORM_TYPES = (nn.modules.batchnorm._BatchNorm,)


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
        self.train_cfg = fill_train_defaults(train_cfg)
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
