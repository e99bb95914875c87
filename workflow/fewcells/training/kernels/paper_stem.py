"""The paper CNN's first three blocks (conv 3 -> 4, pool, ReLU, conv 4 -> 8, pool, ReLU,
conv 8 -> 8, pool) as one compiled CPU kernel, with its autograd function.

On a CPU these blocks are most of a training step in PyTorch: each convolution writes a
full-resolution map that max pooling reads again, and pooling's backward scatters into a
zeroed full-resolution gradient that the convolution's backward then reads in full.
`paper_stem.cpp` computes each convolution two rows at a time and pools them in registers,
and computes the gradients from the pooled gradient directly (built by `loader.load_kernel`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fewcells.training.kernels import loader

WEIGHT_SHAPES = ((4, 3, 3, 3), (8, 4, 3, 3), (8, 8, 3, 3))
MIN_SIZE = 78  # the third block needs a vector (up to 16) of convolution columns


class PaperStemFunction(torch.autograd.Function):
    """Autograd of the fused kernel: gradients for the weights and biases, not the input."""

    @staticmethod
    def forward(ctx, x, weight1, bias1, weight2, bias2, weight3, bias3) -> torch.Tensor:
        kernel, _ = loader.load_kernel()
        pooled3, argmax3, pooled2, argmax2, pooled1, argmax1 = kernel.forward(
            x, weight1, bias1, weight2, bias2, weight3, bias3
        )
        ctx.save_for_backward(
            x, pooled1, argmax1, pooled2, argmax2, argmax3, weight1, weight2, weight3
        )
        return pooled3.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad_pooled3: torch.Tensor):
        if ctx.needs_input_grad[0]:
            raise RuntimeError("paper_stem: the fused kernel has no input gradient")
        kernel, _ = loader.load_kernel()
        return None, *kernel.backward(grad_pooled3, *ctx.saved_tensors)


def fused_applies(x: torch.Tensor, convs: Sequence[torch.nn.Conv2d]) -> bool:
    """Whether the paper CNN's first three blocks (convolutions `convs`) can run on `x` as the
    fused kernel here: a float32 CPU input that needs no gradient, at least MIN_SIZE px, the
    paper's filter counts, and the kernel compiled."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not x.requires_grad
        and x.dim() == 4
        and min(x.shape[-2:]) >= MIN_SIZE
        and tuple(tuple(conv.weight.shape) for conv in convs) == WEIGHT_SHAPES
        and all(conv.weight.dtype == torch.float32 and conv.bias is not None for conv in convs)
        and loader.load_kernel()[0] is not None
    )


def paper_stem(x: torch.Tensor, convs: Sequence[torch.nn.Conv2d]) -> torch.Tensor:
    """pool(conv3(relu(pool(conv2(relu(pool(conv1(x)))))))) by the fused kernel, channels-last
    (check `fused_applies` first)."""
    parameters = [p for conv in convs for p in (conv.weight, conv.bias)]
    return PaperStemFunction.apply(x, *parameters)
