"""Attribution of a network's decision to its input pixels: saliency (|d logit / d input|)
and LRP with zennit composites (the paper's epsilon rule by default)."""

from __future__ import annotations

import numpy as np
import torch
from zennit.attribution import Gradient
from zennit.canonizers import Canonizer, SequentialMergeBatchNorm
from zennit.composites import (
    EpsilonAlpha2Beta1,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,
    layer_map_base,
)
from zennit.rules import Epsilon
from zennit.torchvision import ResNetCanonizer
from zennit.types import Convolution

from fewcells.errors import FewcellsError
from fewcells.training.models import TorchvisionNet

COMPOSITES = ("epsilon", "epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon_gamma_box")


def canonizers_for(model: torch.nn.Module) -> list[Canonizer]:
    """zennit canonizers that put `model` into the form LRP's rules assume.

    The paper CNN needs none. torchvision networks: BatchNorm merged into the convolution it
    follows (SequentialMergeBatchNorm), and for ResNet/ResNeXt also the residual sums made
    explicit modules so that relevance is split between the two branches (ResNetCanonizer).
    DenseNet's BatchNorm layers come before their convolutions and stay as they are.
    """
    if not isinstance(model, TorchvisionNet):
        return []
    if model.arch.startswith(("resnet", "resnext")):
        return [ResNetCanonizer()]
    return [SequentialMergeBatchNorm()]


def input_bounds(model: torch.nn.Module) -> tuple[float | torch.Tensor, float | torch.Tensor]:
    """Lowest and highest value the first layer of `model` sees, for the box rule.

    Networks take pixels / 255, so [0, 1]. A TorchvisionNet normalises inside (x - mean) / std
    before its first convolution, so its bounds are those of pixels 0 and 1 after that, per
    channel (1, 3, 1, 1).
    """
    if isinstance(model, TorchvisionNet):
        return (0 - model.mean) / model.std, (1 - model.mean) / model.std
    return 0.0, 1.0


def make_composite(
    name: str,
    epsilon: float = 1.0,
    canonizers: list[Canonizer] | None = None,
    *,
    gamma: float = 0.25,
    bounds: tuple[float | torch.Tensor, float | torch.Tensor] = (0.0, 1.0),
) -> LayerMapComposite:
    """The zennit composite `name` (one of COMPOSITES) with the epsilon rule's `epsilon`.

    epsilon_gamma_box: the box (z^B) rule with `bounds` (see `input_bounds`) on the first
    convolution, the gamma rule with `gamma` on the other convolutions, epsilon on dense layers.
    """
    canonizers = canonizers or []
    if name == "epsilon":
        rule = Epsilon(epsilon=epsilon)
        return LayerMapComposite(
            layer_map=layer_map_base() + [(Convolution, rule), (torch.nn.Linear, rule)],
            canonizers=canonizers,
        )
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(epsilon=epsilon, canonizers=canonizers)
    if name == "epsilon_alpha2_beta1":
        return EpsilonAlpha2Beta1(epsilon=epsilon, canonizers=canonizers)
    if name == "epsilon_gamma_box":
        low, high = bounds
        return EpsilonGammaBox(
            low=low, high=high, epsilon=epsilon, gamma=gamma, canonizers=canonizers
        )
    raise FewcellsError(
        f"explain.composite: unknown composite {name!r}; choose one of {COMPOSITES}"
    )


def describe_composite(name: str, epsilon: float, gamma: float) -> str:
    """A figure label of the composite `name`: which rule acts where, with its parameters."""
    labels = {
        "epsilon": f"ε rule (ε = {epsilon:g}) on every layer (the paper)",
        "epsilon_plus_flat": f"flat at the input, z⁺ on convolutions, ε = {epsilon:g} on dense",
        "epsilon_alpha2_beta1": f"α2β1 on convolutions, ε = {epsilon:g} on dense",
        "epsilon_gamma_box": (
            f"box rule at the input, γ = {gamma:g} on convolutions, ε = {epsilon:g} on dense"
        ),
    }
    return labels[name]


def _one_hot(targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(targets, n_classes).float()


def lrp(
    model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor, composite: LayerMapComposite
) -> tuple[np.ndarray, np.ndarray]:
    """LRP relevance (B, C, H, W) of the target logits, and those logits (B,).

    The output relevance is the pre-softmax logit of each image's target class.
    """
    model.eval()
    with Gradient(model=model, composite=composite) as attributor:
        logits, relevance = attributor(
            x.clone().requires_grad_(True),
            lambda out: out * _one_hot(targets, out.shape[1]),
        )
    chosen = logits.gather(1, targets[:, None])[:, 0]
    return relevance.detach().numpy(), chosen.detach().numpy()


def saliency(model: torch.nn.Module, x: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """|d logit_target / d input|, maximum over channels: (B, H, W)."""
    model.eval()
    x = x.clone().requires_grad_(True)
    logits = model(x)
    logits.gather(1, targets[:, None]).sum().backward()
    return x.grad.abs().amax(dim=1).numpy()
