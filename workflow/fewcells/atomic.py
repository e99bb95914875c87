"""Atomic outputs: a file or folder appears complete under its final name, or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; rename it onto `target` only on success.

    On any exception the temporary file or folder is removed and `target` is untouched;
    temporaries that a killed earlier attempt left beside `target` are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.tmp-"
    for stale in target.parent.glob(f"{prefix}*"):  # left by a killed earlier attempt
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_UMASK)
        if directory and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def write_csv(frame: pd.DataFrame, target: str | os.PathLike) -> None:
    """Write a DataFrame as CSV (no index), atomically."""
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)


def write_text(text: str, target: str | os.PathLike) -> None:
    """Write text atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_png(figure, target: str | os.PathLike, dpi: int) -> None:
    """Write a matplotlib Figure as PNG, atomically."""
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi)


def write_json(obj, target: str | os.PathLike) -> None:
    """Write JSON (indented, keys sorted) atomically."""
    write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", target)
