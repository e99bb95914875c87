"""The paper's small sequential CNN and the registry that builds networks from the config."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fewcells.errors import FewcellsError

PAPER_FILTERS = (4, 8, 8, 8, 16, 16)


def _size_after_blocks(image_size: int, n_blocks: int) -> int:
    """Side length after `n_blocks` of (3x3 valid conv, 2x2 max pool)."""
    side = image_size
    for _ in range(n_blocks):
        side = (side - 2) // 2
    return side


MIN_IMAGE_SIZE = next(s for s in range(3, 1000) if _size_after_blocks(s, len(PAPER_FILTERS)) >= 1)


class PaperCNN(nn.Module):
    """Schouten et al. 2021: six conv3x3(valid)+ReLU+maxpool2 blocks, Dense 32 ReLU, Dense logits.

    Input: float (B, in_channels, H, W) in [0, 1] (pixels / 255). `forward` returns logits;
    softmax is applied outside. `embed` returns the 32-d hidden layer after its ReLU.
    Each block pools before its ReLU: max pooling commutes with the monotone ReLU, so values
    and gradients are exactly those of conv-ReLU-pool, with the ReLU on 4x fewer pixels.
    """

    def __init__(
        self, n_classes: int, image_size: int = 257, in_channels: int = 3, hidden: int = 32
    ) -> None:
        super().__init__()
        if image_size < MIN_IMAGE_SIZE:
            raise FewcellsError(
                f"image_size {image_size} is too small for paper_cnn: its six conv+pool blocks "
                f"need images of at least {MIN_IMAGE_SIZE} px"
            )
        blocks: list[nn.Module] = []
        channels = in_channels
        for filters in PAPER_FILTERS:
            blocks += [nn.Conv2d(channels, filters, 3), nn.MaxPool2d(2), nn.ReLU()]
            channels = filters
        blocks.append(nn.Flatten())
        self.features = nn.Sequential(*blocks)
        side = _size_after_blocks(image_size, len(PAPER_FILTERS))
        self.hidden = nn.Linear(channels * side * side, hidden)
        self.hidden_activation = nn.ReLU()
        self.classifier = nn.Linear(hidden, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden-layer activations (B, hidden), after ReLU: the layer used for tSNE."""
        return self.hidden_activation(self.hidden(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, n_classes)."""
        return self.classifier(self.embed(x))


def to_model_input(images: torch.Tensor) -> torch.Tensor:
    """Channels-last uint8 images (B, H, W, C) -> float (B, C, H, W) in [0, 1]."""
    return images.permute(0, 3, 1, 2).float().div_(255.0)


def _build_paper_cnn(model_cfg: dict, n_classes: int, image_size: int) -> nn.Module:
    return PaperCNN(n_classes, image_size=image_size, hidden=int(model_cfg.get("hidden", 32)))


MODELS: dict[str, Callable[[dict, int, int], nn.Module]] = {"paper_cnn": _build_paper_cnn}


def build_model(model_cfg: dict, n_classes: int, image_size: int) -> nn.Module:
    """Build the network named by model_cfg["name"].

    Every network maps float (B, 3, H, W) in [0, 1] to logits and exposes `embed(x)` (the last
    hidden layer) and `classifier` (the layer from that embedding to the logits).
    """
    name = model_cfg.get("name")
    if name not in MODELS:
        raise FewcellsError(
            f"model.name: unknown model {name!r}; known models: {', '.join(sorted(MODELS))}"
        )
    return MODELS[name](model_cfg, n_classes, image_size)
