"""What produced a result: fewcells version and commit, torch, Python and the processor."""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path

import torch

from fewcells import __version__

PACKAGE_DIR = Path(__file__).resolve().parent


@functools.cache
def git_commit() -> str:
    """The commit of the checkout fewcells runs from, with "-dirty" when tracked files differ
    from it; "unknown" outside a git checkout (e.g. an installed wheel)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if changed else head


@functools.cache
def cpu_model() -> str:
    """The processor's model name (Linux /proc/cpuinfo), or platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def provenance() -> dict:
    """The software and hardware a result was produced with (train_info.json, summary.md)."""
    return {
        "fewcells_version": __version__,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "cpu": cpu_model(),
    }
