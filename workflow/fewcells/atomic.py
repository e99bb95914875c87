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

from fewcells.errors import FewcellsError

_UMASK = os.umask(0)
os.umask(_UMASK)
# Written into every folder output: a folder that carries it may be replaced by a later run.
OUTPUT_MARKER = ".fewcells-output"
# Sibling temporaries of an output: .<name>.tmp-XXXX (the new one, or the old one set aside).
TEMPORARY_INFIX = ".tmp-"


def temporary_prefix(target: Path) -> str:
    """The name prefix of `target`'s temporary siblings."""
    return f".{target.name}{TEMPORARY_INFIX}"


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def check_replaceable_folder(target: Path, also_marked_by: tuple[str, ...] = ()) -> None:
    """Refuse a folder output whose target fewcells may not replace: `.`, `/`, the home
    folder, the working directory or a parent of it, a file, or a folder that holds
    anything but an earlier output of fewcells (marked by OUTPUT_MARKER or one of
    `also_marked_by`)."""
    resolved = Path(os.path.abspath(target))
    cwd = Path.cwd().resolve()
    home = Path.home().resolve()
    real = resolved.resolve()
    if real == Path(real.anchor) or real == home or cwd.is_relative_to(real):
        raise FewcellsError(
            f"output folder {target}: refusing to replace the file system root, the home "
            "folder, the working directory or a parent of it; give a new folder"
        )
    if not (resolved.exists() or resolved.is_symlink()):
        return
    if not resolved.is_dir() or resolved.is_symlink():
        raise FewcellsError(f"output folder {target}: exists and is not a folder; not replacing it")
    markers = (OUTPUT_MARKER, *also_marked_by)
    if any(resolved.iterdir()) and not any((resolved / name).is_file() for name in markers):
        raise FewcellsError(
            f"output folder {target}: exists, is not empty and was not written by fewcells "
            f"(no {OUTPUT_MARKER} file); not replacing it - give a new or empty folder"
        )


def remove_stale_temporaries(target: Path) -> None:
    """Remove the temporaries that a killed earlier attempt left beside `target`, and an
    empty `target` folder left with them."""
    target = Path(target)
    stale = list(target.parent.glob(f"{temporary_prefix(target)}*"))
    for path in stale:
        _remove(path)
    if stale and target.is_dir() and not target.is_symlink() and not any(target.iterdir()):
        target.rmdir()


@contextlib.contextmanager
def atomic_path(
    target: str | os.PathLike, directory: bool = False, also_marked_by: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; rename it onto `target` only on success.

    On any exception the temporary file or folder is removed and `target` is untouched;
    temporaries that a killed earlier attempt left beside `target` are removed first.
    A folder output carries OUTPUT_MARKER; an existing `target` folder is replaced only
    when it is empty or an earlier output (see check_replaceable_folder), else
    FewcellsError before anything is written. The old folder is renamed aside, the new
    one moved in, then the old one removed.
    """
    target = Path(target)
    if directory:
        check_replaceable_folder(target, also_marked_by)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise FewcellsError(
            f"cannot create the folder {target.parent} for {target}: {error.strerror or error}"
        ) from None
    prefix = temporary_prefix(target)
    for stale in target.parent.glob(f"{prefix}*"):  # left by a killed earlier attempt
        _remove(stale)
    try:
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
        else:
            fd, name = tempfile.mkstemp(prefix=prefix, dir=target.parent)
            os.close(fd)
            tmp = Path(name)
    except OSError as error:
        raise FewcellsError(
            f"cannot write {target}: {error.strerror or error} in {target.parent}"
        ) from None
    try:
        yield tmp
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_UMASK)
        if directory:
            (tmp / OUTPUT_MARKER).write_text("written by fewcells; a later run may replace it\n")
            _replace_folder(tmp, target, also_marked_by)
        else:
            os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def _replace_folder(tmp: Path, target: Path, also_marked_by: tuple[str, ...]) -> None:
    """Move the finished folder `tmp` onto `target`, setting an earlier output aside first."""
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    check_replaceable_folder(target, also_marked_by)  # it may have changed while we worked
    aside = Path(tempfile.mkdtemp(prefix=temporary_prefix(target), dir=target.parent))
    os.replace(target, aside)  # an empty folder is replaced by a rename
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(aside, target)
        raise
    _remove(aside)


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
