"""The paper CNN's first three blocks (conv 3 -> 4, pool, ReLU, conv 4 -> 8, pool, ReLU,
conv 8 -> 8, pool) as one CPU kernel.

On a CPU these blocks are most of a training step in PyTorch: each convolution writes a
full-resolution map that max pooling reads again, and pooling's backward scatters into a
zeroed full-resolution gradient that the convolution's backward then reads in full.
`kernels/paper_stem.cpp` computes each convolution two rows at a time and pools them in
registers, and computes the gradients from the pooled gradient directly. The same compiled
module holds the augmentation's rotation (`kernels/rotate.cpp`, used by fewcells.augment).
It is compiled on first use with the machine's C++ compiler (torch.utils.cpp_extension,
about 35 s; cached in TORCH_EXTENSIONS_DIR or ~/.cache/torch_extensions, one build per CPU
instruction set, Python, torch and source version). Where it cannot be compiled,
`load_kernel` says why and callers use PyTorch's operations.
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
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch

KERNELS = Path(__file__).with_name("kernels")
# compiled into one module; the headers only count for the build name
SOURCES = [KERNELS / name for name in ("module.cpp", "paper_stem.cpp", "rotate.cpp")]
HEADERS = [KERNELS / name for name in ("kernels.h", "simd.h")]
# gcc flags for the instruction sets torch itself dispatches to on this CPU
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}
WEIGHT_SHAPES = ((4, 3, 3, 3), (8, 4, 3, 3), (8, 8, 3, 3))
MIN_SIZE = 78  # the third block needs a vector (up to 16) of convolution columns


def _build_name(capability: str, flags: list[str]) -> str:
    """Extension name: one build per instruction set, Python, torch and source version."""
    texts = [path.read_text() for path in (*SOURCES, *HEADERS)]
    key = "\n".join([*texts, torch.__version__, sys.version, *flags])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"fewcells_paper_stem_{capability.lower()}_{digest}"


def _put_ninja_on_path() -> None:
    """torch builds with the `ninja` on PATH; use the pip package's when there is none."""
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = os.pathsep.join([ninja.BIN_DIR, os.environ.get("PATH", "")])


def _copy_sources(folder: Path) -> list[str]:
    """The kernel sources copied into `folder` (rewritten only where they differ): the build
    then reads the same paths from whichever checkout loads it, so checkouts with the same
    sources share one build instead of rebuilding it in turn."""
    folder.mkdir(exist_ok=True)
    for path in (*SOURCES, *HEADERS):
        copy = folder / path.name
        if not copy.is_file() or copy.read_bytes() != path.read_bytes():
            shutil.copyfile(path, copy)
    return [str(folder / path.name) for path in SOURCES]


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
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return None, f"unavailable (no C++ compiler {compiler!r} on PATH)"
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", *_ISA_FLAGS.get(capability, [])]
    name = _build_name(capability, flags)
    build_root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    build_dir = Path(build_root) / name
    try:
        build_dir.mkdir(parents=True, exist_ok=True)
        with open(build_dir.parent / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            # torch's own lock file, left behind if a build was killed; we hold the real lock
            (build_dir / "lock").unlink(missing_ok=True)
            sources = _copy_sources(build_dir / "sources")
            with contextlib.redirect_stdout(io.StringIO()):  # ninja's progress lines
                module = cpp_extension.load(
                    name,
                    sources,
                    extra_cflags=flags,
                    build_directory=str(build_dir),
                    verbose=False,
                )
    except (OSError, RuntimeError, ImportError, subprocess.SubprocessError) as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        return None, f"unavailable ({reason})"
    return module, f"compiled kernel ({capability})"


class _PaperStemFunction(torch.autograd.Function):
    """Autograd of the fused kernel: gradients for the weights and biases, not the input."""

    @staticmethod
    def forward(ctx, x, weight1, bias1, weight2, bias2, weight3, bias3) -> torch.Tensor:
        kernel, _ = load_kernel()
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
        kernel, _ = load_kernel()
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
        and load_kernel()[0] is not None
    )


def paper_stem(x: torch.Tensor, convs: Sequence[torch.nn.Conv2d]) -> torch.Tensor:
    """pool(conv3(relu(pool(conv2(relu(pool(conv1(x)))))))) by the fused kernel, channels-last
    (check `fused_applies` first)."""
    parameters = [p for conv in convs for p in (conv.weight, conv.bias)]
    return _PaperStemFunction.apply(x, *parameters)
