"""Manifest stage: one row per image of a data set (id, path, label, size, mode, checksum).

Supported layouts (``dataset.kind``):

- ``all_idb2``: ``root/ImNNN_L.tif``, L = 1 blast (ALL patient) / 0 healthy.
- ``pbc``: ``root/<class>/*.jpg``; the file-name prefix before ``_`` is the sub-type.
- ``aml_tcia``: ``root/CODE/CODE_NNNN.tiff`` plus ``annotations.dat``; images are matched to
  annotation rows by file name because folder names do not always match the annotation path.
- ``csv``: ``root/labels.csv`` with columns ``path,label`` (extra columns are carried along).
- ``folder`` (image sets to classify only): every image under ``root``, without labels; a
  ``csv`` table may then also lack the ``label`` column (``require_labels=False``).

Images are read one at a time, so memory does not grow with the number of images.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from fewcells.atomic import write_csv
from fewcells.contracts import MANIFEST_COLUMNS
from fewcells.errors import FewcellsError

KINDS = ("all_idb2", "pbc", "aml_tcia", "csv")
# Layouts of image sets that are classified, not trained on: labels are optional ("" if none).
UNLABELLED_KINDS = ("folder",)
ON_BAD_IMAGE = ("error", "skip")
IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".jpg", ".jpeg", ".png", ".bmp"})
AML_REANNOTATION_COLUMNS = ["label_reannotation1", "label_reannotation2"]
ALL_IDB2_NAME = re.compile(r"^Im\d+_(?P<suffix>[01])\.tiff?$", re.IGNORECASE)
ALL_IDB2_LABELS = {"1": "blast", "0": "healthy"}
# Errors PIL raises on files that are not (complete) images.
PIL_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    EOFError,
    Image.DecompressionBombError,
)

# Leading bytes of the supported formats, to tell a damaged image from a file of another kind.
IMAGE_SIGNATURES = (
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
)
SKIP_ADVICE = "set dataset.on_bad_image: skip to leave them out"

_LOG = logging.getLogger(__name__)

Entry = tuple[Path, dict[str, str]]


class _BadFiles:
    """Applies the ``dataset.on_bad_image`` policy: collect every bad file and raise one error
    listing them all at the end, or log a warning per file and count."""

    def __init__(self, policy: str, log: Callable[[str], object], skip_advice: str) -> None:
        self.policy = policy
        self.log = log
        self.skip_advice = skip_advice
        self.problems: list[str] = []
        self.skipped = 0

    def report(self, path: Path, reason: str) -> None:
        if self.policy == "error":
            self.problems.append(f"{path}: {reason}")
            return
        self.skipped += 1
        self.log(f"skipping {path}: {reason}")

    def raise_if_any(self, root: Path) -> None:
        """Raise one error naming every bad file found under `root`, if there were any."""
        if self.problems:
            listing = "\n".join(f"  {problem}" for problem in self.problems)
            raise FewcellsError(
                f"{len(self.problems)} bad file(s) under {root}:\n{listing}\n"
                f"fix or remove them, or {self.skip_advice}"
            )


def _is_ignored_dir(name: str) -> bool:
    """Hidden folders and macOS archive metadata never hold data set images."""
    return name.startswith(".") or name == "__MACOSX"


def _is_image_name(name: str) -> bool:
    """An image suffix and not a hidden file: macOS writes `._NAME` metadata files (AppleDouble)
    beside every file it copies to a foreign disk or archive, and `.DS_Store` folder files."""
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")


def _image_files(root: Path) -> Iterator[Path]:
    """All image files under `root` (see `_is_image_name`), in sorted order; others ignored."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not _is_ignored_dir(d))
        for name in sorted(filenames):
            if _is_image_name(name):
                yield Path(dirpath, name)


def _all_idb2_entries(root: Path, bad: _BadFiles) -> Iterator[Entry]:
    for path in sorted(root.iterdir()):
        if not path.is_file() or not _is_image_name(path.name):
            continue
        match = ALL_IDB2_NAME.match(path.name)
        if match is None:
            bad.report(path, "name does not match the ALL-IDB2 pattern ImNNN_L.tif (L = 0 or 1)")
            continue
        yield path, {"label": ALL_IDB2_LABELS[match["suffix"]]}


def _pbc_entries(root: Path, bad: _BadFiles) -> Iterator[Entry]:
    for path in _image_files(root):
        parts = path.relative_to(root).parts
        if len(parts) != 2:
            bad.report(path, "not directly inside a class folder root/<class>/ (PBC layout)")
            continue
        subtype = path.stem.split("_", 1)[0] if "_" in path.stem else ""
        yield path, {"label": parts[0], "subtype": subtype}


def _read_aml_annotations(path: Path) -> dict[str, tuple[str, str, str]]:
    """Map image file name -> (original class, re-annotation 1, re-annotation 2); '' for nan."""
    if not path.is_file():
        raise FewcellsError(f"{path}: AML annotation file not found (dataset.annotations)")
    by_name: dict[str, tuple[str, str, str]] = {}
    first_line: dict[str, int] = {}
    with path.open() as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 4:
                raise FewcellsError(
                    f"{path}, line {number}: expected 4 whitespace-separated fields "
                    f"(path, class, re-annotation 1, re-annotation 2), found {len(fields)}"
                )
            image_path, *classes = fields
            original, first, second = ("" if c == "nan" else c for c in classes)
            if not original:
                raise FewcellsError(f"{path}, line {number}: {image_path} has no original class")
            name = PurePosixPath(image_path).name
            if name in by_name and by_name[name] != (original, first, second):
                raise FewcellsError(
                    f"{path}, lines {first_line[name]} and {number}: file name {name} "
                    "appears twice with different classes, so images cannot be matched by name"
                )
            by_name[name] = (original, first, second)
            first_line.setdefault(name, number)
    return by_name


def _aml_entries(root: Path, bad: _BadFiles, annotations: Path) -> Iterator[Entry]:
    classes_by_name = _read_aml_annotations(annotations)
    for path in _image_files(root):
        classes = classes_by_name.get(path.name)
        if classes is None:
            bad.report(path, f"no row for file name {path.name} in {annotations}")
            continue
        yield path, dict(zip(["label", *AML_REANNOTATION_COLUMNS], classes, strict=True))


def _folder_entries(root: Path) -> Iterator[Entry]:
    for path in _image_files(root):
        yield path, {"label": ""}


def _csv_entries(
    root: Path, bad: _BadFiles, labels_csv: Path, require_labels: bool = True
) -> Iterator[Entry]:
    if not labels_csv.is_file():
        raise FewcellsError(f"{labels_csv}: label table not found (dataset.labels_csv)")
    try:
        table = pd.read_csv(labels_csv, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FewcellsError(f"{labels_csv}: cannot parse as CSV ({error})") from error
    if not require_labels and "label" not in table.columns:
        table["label"] = ""
    for column in ("path", "label"):
        if column not in table.columns:
            raise FewcellsError(f"{labels_csv}: missing column '{column}' (needs path,label)")
    clashing = [c for c in table.columns if c in MANIFEST_COLUMNS and c not in ("path", "label")]
    if clashing:
        raise FewcellsError(
            f"{labels_csv}: column(s) {clashing} clash with manifest columns; rename them"
        )
    extra_columns = [c for c in table.columns if c not in ("path", "label")]
    for line, record in enumerate(table.to_dict("records"), start=2):
        if not record["path"] or (require_labels and not record["label"]):
            raise FewcellsError(f"{labels_csv}, line {line}: empty path or label")
        path = Path(os.path.abspath(root / record["path"]))
        if not path.is_file():
            bad.report(path, f"listed in {labels_csv} (line {line}) but does not exist")
            continue
        yield path, {"label": record["label"], **{c: record[c] for c in extra_columns}}


@contextlib.contextmanager
def _quiet_exif_warnings() -> Iterator[None]:
    """Silence PIL's 'Corrupt EXIF data' warning, raised by every AML-Cytomorphology tiff."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Corrupt EXIF data", category=UserWarning)
        yield


def _inspect_image(path: Path) -> tuple[dict[str, object] | None, str]:
    """Fully decode one image: (width/height/mode/sha256, '') or (None, reason it is bad)."""
    try:
        data = path.read_bytes()
    except OSError as error:
        return None, f"cannot read file ({error.strerror or error})"
    if not data:
        return None, "empty file (0 bytes)"
    try:
        with _quiet_exif_warnings():
            with Image.open(io.BytesIO(data)) as image:
                image.verify()
            with Image.open(io.BytesIO(data)) as image:
                image.load()
                width, height = image.size
                mode = image.mode
    except UnidentifiedImageError:
        signature = next((name for magic, name in IMAGE_SIGNATURES if data.startswith(magic)), None)
        if signature:
            return None, (
                f"truncated or damaged {signature} file ({len(data)} bytes; it starts like a "
                f"{signature}, but PIL cannot read it)"
            )
        return None, "not an image (PIL cannot identify the format)"
    except PIL_DECODE_ERRORS as error:
        return None, f"not a readable image ({type(error).__name__}: {error})"
    sha256 = hashlib.sha256(data).hexdigest()
    return {"width": width, "height": height, "mode": mode, "sha256": sha256}, ""


def _image_id(path: Path, root: Path) -> str:
    """The file's path relative to `root`, POSIX, without extension."""
    relative = PurePosixPath(Path(os.path.relpath(path, root)).as_posix())
    return str(relative.with_suffix(""))


def build_manifest(
    root: Path,
    kind: str,
    *,
    on_bad_image: str = "error",
    labels_csv: str = "labels.csv",
    annotations: str | None = None,
    log: Callable[[str], object] | None = None,
    skip_advice: str = SKIP_ADVICE,
    require_labels: bool = True,
) -> pd.DataFrame:
    """Table of every image under `root` for layout `kind`, one row per image, sorted by id.

    Bad files (unreadable, not images, misnamed for the layout) are all reported in one
    error, or with ``on_bad_image="skip"`` logged one warning each and left out;
    `skip_advice` is how the caller's user asks for that. With ``require_labels=False``
    (image sets to classify) kind ``folder`` is allowed and a csv table needs no labels.
    """
    kinds = KINDS if require_labels else KINDS + UNLABELLED_KINDS
    if kind not in kinds:
        raise FewcellsError(f"dataset.kind: unknown kind {kind!r}; allowed: {', '.join(kinds)}")
    if on_bad_image not in ON_BAD_IMAGE:
        raise FewcellsError(
            f"dataset.on_bad_image: unknown value {on_bad_image!r}; "
            f"allowed: {', '.join(ON_BAD_IMAGE)}"
        )
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise FewcellsError(f"{root}: data set root is not a directory (dataset.root)")
    bad = _BadFiles(on_bad_image, log or _LOG.warning, skip_advice)
    if kind == "all_idb2":
        entries = _all_idb2_entries(root, bad)
    elif kind == "pbc":
        entries = _pbc_entries(root, bad)
    elif kind == "aml_tcia":
        annotations_path = root / "annotations.dat" if annotations is None else Path(annotations)
        entries = _aml_entries(root, bad, annotations_path)
    elif kind == "folder":
        entries = _folder_entries(root)
    else:
        entries = _csv_entries(root, bad, root / labels_csv, require_labels)

    rows: list[dict[str, object]] = []
    path_by_id: dict[str, Path] = {}
    for path, labels in entries:
        image_id = _image_id(path, root)
        if image_id in path_by_id:
            raise FewcellsError(
                f"{path} and {path_by_id[image_id]} share the image id {image_id!r} "
                "(path without extension); rename one of them"
            )
        info, reason = _inspect_image(path)
        if info is None:
            bad.report(path, reason)
            continue
        path_by_id[image_id] = path
        rows.append({"image_id": image_id, "path": str(path), **info, **labels})
    bad.raise_if_any(root)
    if bad.skipped:
        bad.log(f"skipped {bad.skipped} bad file(s) under {root} (dataset.on_bad_image: skip)")
    if not rows:
        skipped = f" ({bad.skipped} bad file(s) skipped)" if bad.skipped else ""
        raise FewcellsError(f"{root}: no images found for dataset.kind {kind!r}{skipped}")
    frame = pd.DataFrame(rows)
    extra_columns = [c for c in frame.columns if c not in MANIFEST_COLUMNS]
    return frame[MANIFEST_COLUMNS + extra_columns].sort_values("image_id", ignore_index=True)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a manifest as CSV, atomically."""
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise FewcellsError(f"{path}: manifest to write lacks column(s) {missing}")
    write_csv(df, path)


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV and check its columns, ids and sizes; labels stay strings."""
    path = Path(path)
    if not path.is_file():
        raise FewcellsError(f"{path}: manifest not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise FewcellsError(f"{path}: cannot parse manifest CSV ({error})") from error
    missing = [c for c in MANIFEST_COLUMNS if c not in frame.columns]
    if missing:
        raise FewcellsError(f"{path}: not a manifest, missing column(s) {missing}")
    duplicated = frame["image_id"][frame["image_id"].duplicated()].tolist()
    if duplicated:
        raise FewcellsError(f"{path}: duplicate image_id(s) {duplicated[:5]}")
    for column in ("width", "height"):
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any() or (values <= 0).any() or (values % 1 != 0).any():
            raise FewcellsError(f"{path}: column '{column}' must hold positive integers")
        frame[column] = values.astype(int)
    extra_columns = [c for c in frame.columns if c not in MANIFEST_COLUMNS]
    return frame[MANIFEST_COLUMNS + extra_columns]


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map 16-bit intensities (0..65535) to 0..255, clipping anything outside."""
    return np.round(np.clip(values.astype(np.float64), 0, 65535) / 257).astype(np.uint8)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read any image as an (H, W, 3) uint8 RGB array.

    Transparency (RGBA, LA, PA, P with a transparent index) is composited on white;
    16-bit and 32-bit grey modes (I;16*, I, F) are read as 16-bit intensities.
    """
    try:
        with _quiet_exif_warnings(), Image.open(path) as image:
            image.load()
            if image.mode.startswith("I") or image.mode == "F":
                grey = _sixteen_bit_to_uint8(np.asarray(image))
                return np.repeat(grey[:, :, np.newaxis], 3, axis=2)
            if "A" in image.getbands() or "transparency" in image.info:
                rgba = image.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                image = Image.alpha_composite(white, rgba)
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except PIL_DECODE_ERRORS as error:
        raise FewcellsError(
            f"{path}: cannot read image ({type(error).__name__}: {error})"
        ) from error
