"""The paper CNN's first block (3x3 conv 3 -> 4 channels, 2x2 max pool) as one CPU kernel.

On a CPU that block is half of a training step in PyTorch: its convolution writes a
full-resolution 4-channel map that max pooling reads again, and pooling's backward scatters
into a zeroed full-resolution gradient before the weight gradient is computed over every
position. `kernels/conv_pool.cpp` computes the convolution two rows at a time and pools
them in registers, and computes the weight and bias gradients from the pooled gradient and
the input rows directly (2.5x faster for forward and backward together). It is compiled on
first use with the machine's C++ compiler (torch.utils.cpp_extension, about 30 s; cached in
TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions, one build per CPU instruction set, Python,
torch and source version). Where it cannot be compiled, `conv_pool` is None and callers use
PyTorch's layers.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import torch

SOURCE = Path(__file__).with_name("kernels") / "conv_pool.cpp"
# gcc flags for the instruction sets torch itself dispatches to on this CPU
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}
WEIGHT_SHAPE = (4, 3, 3, 3)
MIN_WIDTH = 18  # the kernel's 16-column vectors


def _build_name(flags: list[str]) -> str:
    """Extension name: one build per instruction set, Python, torch and source version."""
    key = "\n".join([SOURCE.read_text(), torch.__version__, sys.version, *flags])
    capability = torch.backends.cpu.get_cpu_capability().lower()
    return f"fewcells_conv_pool_{capability}_{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def _put_ninja_on_path() -> None:
    """torch builds with the `ninja` on PATH; use the pip package's when there is none."""
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


@functools.cache
def load_kernel() -> tuple[ModuleType | None, str]:
    """The compiled kernel module (None if it cannot be built here) and how it was obtained.

    Builds are serialised with a lock that the operating system releases when its holder dies,
    so concurrent training jobs build once and a killed build never blocks the next one.
    """
    # importing cpp_extension warns that there is no CUDA, which a CPU kernel does not need
    cuda_logger = logging.getLogger("torch.utils.cpp_extension")
    level = cuda_logger.level
    cuda_logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        cuda_logger.setLevel(level)
    _put_ninja_on_path()
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", *_ISA_FLAGS.get(capability, [])]
    name = _build_name(flags)
    build_dir = Path(cpp_extension.get_default_build_root()) / name
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        with open(build_dir.parent / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # torch's own lock file, left behind if a build was killed; we hold the real lock
            (build_dir / "lock").unlink(missing_ok=True)
            build_log = io.StringIO()
            with contextlib.redirect_stdout(build_log):
                module = cpp_extension.load(
                    name,
                    [str(SOURCE)],
                    extra_cflags=flags,
                    build_directory=str(build_dir),
                    verbose=False,
                )
    except (OSError, RuntimeError, ImportError, subprocess.SubprocessError) as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error)
        return None, f"unavailable ({reason})"
    return module, f"compiled kernel ({capability})"


class _ConvPoolFunction(torch.autograd.Function):
    """Autograd of the fused kernel: gradients for the weight and bias, not for the input."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        kernel, _ = load_kernel()
        pooled, argmax = kernel.forward(x, weight, bias)
        ctx.save_for_backward(x, argmax)
        return pooled

    @staticmethod
    def backward(ctx, grad_pooled: torch.Tensor):
        if ctx.needs_input_grad[0]:
            raise RuntimeError("conv_pool: the fused kernel has no input gradient")
        x, argmax = ctx.saved_tensors
        kernel, _ = load_kernel()
        grad_weight, grad_bias = kernel.backward(grad_pooled, x, argmax)
        return None, grad_weight, grad_bias


def fused_applies(x: torch.Tensor, conv: torch.nn.Conv2d) -> bool:
    """Whether `conv` followed by 2x2 max pooling of `x` can run as the fused kernel here:
    a float32 CPU input that needs no gradient, a 3 -> 4 channel 3x3 convolution, and the
    kernel compiled."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not x.requires_grad
        and x.dim() == 4
        and x.shape[-1] >= MIN_WIDTH
        and x.shape[-2] >= 4
        and tuple(conv.weight.shape) == WEIGHT_SHAPE
        and conv.weight.dtype == torch.float32
        and conv.bias is not None
        and load_kernel()[0] is not None
    )


def conv_pool(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """max_pool2d(conv(x), 2) by the fused kernel (check `fused_applies` first); channels-last."""
    return _ConvPoolFunction.apply(x, conv.weight, conv.bias)
