"""Builds and loads the compiled CPU kernels (the C++ sources beside this file) as one module.

The module holds the paper CNN's first three blocks (`paper_stem.cpp`, used through
fewcells.training.kernels.paper_stem) and the augmentation's rotation (`rotate.cpp`, used
by fewcells.training.augment). It is compiled on first use with the machine's C++ compiler
(torch.utils.cpp_extension, about 35 s; cached in TORCH_EXTENSIONS_DIR or
~/.cache/torch_extensions, one build per CPU instruction set, Python, torch and source
version). Where it cannot be compiled, `load_kernel` says why and callers use PyTorch's
operations.
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

KERNELS = Path(__file__).resolve().parent
# compiled into one module; the headers only count for the build name
SOURCES = [KERNELS / name for name in ("module.cpp", "paper_stem.cpp", "rotate.cpp")]
HEADERS = [KERNELS / name for name in ("kernels.h", "simd.h")]
# gcc flags for the instruction sets torch itself dispatches to on this CPU
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mavx2", "-mfma"],
    "AVX2": ["-mavx2", "-mfma"],
}


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
