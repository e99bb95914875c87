"""A small synthetic ALL-IDB2-like data set: the workflow's default data on a fresh machine.

Every image is one stained leukocyte (May-Grünwald-Giemsa-like colours) among red blood cells,
rendered with a Beer-Lambert absorbance model: each structure adds optical density, and the
camera turns density into light, blurs it and adds noise. Classes differ in real morphology
(cell size, nuclear shape and chromatin, cytoplasm colour, granules). Duplicates are planted
the way ALL-IDB2 has them and listed in planted_duplicates.csv as ground truth.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fewcells.atomic import atomic_path
from fewcells.data.demo_cells import (
    CANVAS_MARGIN,
    CELL_TYPES,
    REFERENCE_SIZE,
    Scene,
    photograph,
    render_scene,
)
from fewcells.errors import FewcellsError

DEMO_CLASSES = ["blast", "lymphocyte", "neutrophil", "monocyte", "eosinophil"]
MASK_COLOURS = {
    "background": (255, 255, 255),
    "nucleus": (0, 255, 255),
    "cytoplasm": (0, 0, 255),
}
DUPLICATE_KINDS = ("shifted", "exact", "rephotographed")
BORDER_CROP_FRACTION = 0.05
MIN_IMAGE_SIZE = 64
MAX_DUPLICATE_SHIFT = 5
_MAX_RETAKE_SHIFT = 3


@dataclass(frozen=True)
class Window:
    """A crop of the canvas: top-left corner and size in px."""

    top: int
    left: int
    height: int
    width: int

    def cut(self, array: np.ndarray) -> np.ndarray:
        """The window's part of an (H, W, ...) array."""
        return array[self.top : self.top + self.height, self.left : self.left + self.width]


@dataclass(frozen=True)
class PlannedImage:
    """One original scene to render, and the duplicate planted from it, if any."""

    label: str
    class_index: int
    scene_index: int
    path: str
    window: Window
    duplicate_path: str | None = None
    duplicate_kind: str | None = None
    duplicate_window: Window | None = None  # None for an exact (byte) copy


def generate_demo(
    out_dir: Path,
    *,
    seed: int = 0,
    n_per_class: int | dict[str, int] = 40,
    image_size: int = 257,
    n_duplicates: int = 10,
    classes: list[str] | None = None,
    colour_shift: Sequence[float] | None = None,
) -> pd.DataFrame:
    """Write the synthetic data set to out_dir atomically; return its labels (path, label).

    Writes <class>/<class>_NNNN.tif, masks/<class>/<class>_NNNN.png, labels.csv and
    planted_duplicates.csv (original, duplicate, kind). Same seed, same bytes.
    `colour_shift` (gains for red, green, blue) photographs with another stain and lamp:
    an image set from "another laboratory" for external validation.
    """
    out_dir = Path(out_dir)
    counts = _class_counts(n_per_class, classes)
    _check_arguments(out_dir, seed, image_size, n_duplicates, counts)
    plan = _plan(counts, seed=seed, image_size=image_size, n_duplicates=n_duplicates)
    scale = image_size / REFERENCE_SIZE
    canvas_size = image_size + CANVAS_MARGIN
    with atomic_path(out_dir, directory=True, also_marked_by=("planted_duplicates.csv",)) as tmp:
        for label in counts:
            (tmp / label).mkdir()
            (tmp / "masks" / label).mkdir(parents=True)
        for item in plan:
            rng = np.random.default_rng([seed, item.class_index, item.scene_index])
            scene = render_scene(item.label, rng, canvas_size=canvas_size, scale=scale)
            photo = _shift_colour(photograph(scene, rng), colour_shift)
            _save(tmp, item.path, item.window.cut(photo), mask_image(scene, item.window))
            if item.duplicate_kind == "exact":
                shutil.copyfile(tmp / item.path, tmp / item.duplicate_path)
                shutil.copyfile(tmp / _mask_path(item.path), tmp / _mask_path(item.duplicate_path))
            elif item.duplicate_kind is not None:
                if item.duplicate_kind == "rephotographed":
                    photo = _shift_colour(photograph(scene, rng, retake=True), colour_shift)
                window = item.duplicate_window
                _save(tmp, item.duplicate_path, window.cut(photo), mask_image(scene, window))
        labels = _labels_frame(plan)
        labels.to_csv(tmp / "labels.csv", index=False)
        _duplicates_frame(plan).to_csv(tmp / "planted_duplicates.csv", index=False)
    return labels


def mask_image(scene: Scene, window: Window) -> np.ndarray:
    """Expert-style mask of a crop: ALL-IDB2 colours for background, nucleus, cytoplasm."""
    palette = np.array(
        [MASK_COLOURS["background"], MASK_COLOURS["cytoplasm"], MASK_COLOURS["nucleus"]],
        dtype=np.uint8,
    )
    return palette[window.cut(scene.cell).view(np.uint8) + window.cut(scene.nucleus)]


def _class_counts(n_per_class: int | dict[str, int], classes: list[str] | None) -> dict[str, int]:
    """Images per class, in class order, from the two ways of giving them."""
    if classes is None:
        classes = list(n_per_class) if isinstance(n_per_class, dict) else list(DEMO_CLASSES)
    if not classes:
        raise FewcellsError("demo classes: the list of classes is empty")
    unknown = [label for label in classes if label not in CELL_TYPES]
    if unknown:
        raise FewcellsError(f"demo classes: unknown {unknown}; choose from {DEMO_CLASSES}")
    if len(set(classes)) != len(classes):
        raise FewcellsError(f"demo classes: {classes} lists a class twice")
    if isinstance(n_per_class, dict):
        missing = [label for label in classes if label not in n_per_class]
        if missing:
            raise FewcellsError(f"demo n_per_class: no count for class(es) {missing}")
        counts = {label: n_per_class[label] for label in classes}
    else:
        counts = dict.fromkeys(classes, n_per_class)
    for label, count in counts.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise FewcellsError(
                f"demo n_per_class: {label!r} needs a whole number >= 1, got {count!r}"
            )
    return counts


def _check_arguments(
    out_dir: Path, seed: int, image_size: int, n_duplicates: int, counts: dict[str, int]
) -> None:
    """Reject bad arguments, and refuse to replace a folder that is not a demo data set."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FewcellsError(f"demo seed: needs a whole number >= 0, got {seed!r}")
    if not isinstance(image_size, int) or image_size < MIN_IMAGE_SIZE:
        raise FewcellsError(
            f"demo image_size: needs a whole number >= {MIN_IMAGE_SIZE}, got {image_size!r}"
        )
    n_full_size = sum(counts.values()) - _n_border_crops(sum(counts.values()))
    if (
        isinstance(n_duplicates, bool)
        or not isinstance(n_duplicates, int)
        or not 0 <= n_duplicates <= n_full_size
    ):
        raise FewcellsError(
            f"demo n_duplicates: needs a whole number from 0 to {n_full_size} "
            f"(one per full-size original), got {n_duplicates!r}"
        )
    if out_dir.exists() and (
        not out_dir.is_dir()
        or (any(out_dir.iterdir()) and not (out_dir / "planted_duplicates.csv").is_file())
    ):
        raise FewcellsError(f"{out_dir}: exists and is not a demo data set; refusing to replace it")


def _n_border_crops(n_originals: int) -> int:
    return round(BORDER_CROP_FRACTION * n_originals)


def _plan(
    counts: dict[str, int], *, seed: int, image_size: int, n_duplicates: int
) -> list[PlannedImage]:
    """Decide every file: names (shuffled so duplicates do not stand out), crops, duplicates."""
    rng = np.random.default_rng([seed])
    originals = [(label, i) for label in counts for i in range(counts[label])]
    order = rng.permutation(len(originals))
    border = set(order[: _n_border_crops(len(originals))].tolist())
    duplicated = order[len(border) : len(border) + n_duplicates].tolist()
    kind_of = {
        index: DUPLICATE_KINDS[k % len(DUPLICATE_KINDS)] for k, index in enumerate(duplicated)
    }

    file_numbers = {}
    for label, count in counts.items():
        n_files = count + sum(originals[index][0] == label for index in duplicated)
        file_numbers[label] = iter(rng.permutation(n_files).tolist())

    def path_for(label: str) -> str:
        return f"{label}/{label}_{next(file_numbers[label]):04d}.tif"

    centred = Window(CANVAS_MARGIN // 2, CANVAS_MARGIN // 2, image_size, image_size)
    plan = []
    for index, (label, scene_index) in enumerate(originals):
        item = PlannedImage(
            label=label,
            class_index=DEMO_CLASSES.index(label),
            scene_index=scene_index,
            path=path_for(label),
            window=_border_crop(rng, centred) if index in border else centred,
        )
        kind = kind_of.get(index)
        if kind is not None:
            item = replace(item, duplicate_path=path_for(label), duplicate_kind=kind)
        if kind == "shifted":
            first, second = _shifted_windows(rng, image_size)
            item = replace(item, window=first, duplicate_window=second)
        elif kind == "rephotographed":
            dy, dx = rng.integers(-_MAX_RETAKE_SHIFT, _MAX_RETAKE_SHIFT + 1, size=2)
            moved = Window(centred.top + int(dy), centred.left + int(dx), image_size, image_size)
            item = replace(item, duplicate_window=moved)
        plan.append(item)
    return plan


def _border_crop(rng: np.random.Generator, window: Window) -> Window:
    """Cut 1-25% off one side, like the smaller ALL-IDB2 images of cells at a slide's border."""
    cut = int(rng.integers(max(1, window.height // 100), window.height // 4 + 1))
    side = int(rng.integers(4))
    top = window.top + (cut if side == 0 else 0)
    left = window.left + (cut if side == 1 else 0)
    height = window.height - (cut if side in (0, 2) else 0)
    width = window.width - (cut if side in (1, 3) else 0)
    return Window(top, left, height, width)


def _shifted_windows(rng: np.random.Generator, image_size: int) -> tuple[Window, Window]:
    """Two crops of one canvas whose offsets differ by 3-5 px along at least one axis.

    Real ALL-IDB2 shifted crops move by 3-9 px; smaller shifts stay within the default
    hash distance.
    """
    while True:
        shift = rng.integers(-MAX_DUPLICATE_SHIFT, MAX_DUPLICATE_SHIFT + 1, size=2)
        if np.abs(shift).max() >= 3:
            break
    first = [int(rng.integers(max(0, -d), CANVAS_MARGIN - max(0, d) + 1)) for d in shift]
    second = [f + int(d) for f, d in zip(first, shift, strict=True)]
    return (
        Window(first[0], first[1], image_size, image_size),
        Window(second[0], second[1], image_size, image_size),
    )


def _shift_colour(photo: np.ndarray, gains: Sequence[float] | None) -> np.ndarray:
    """The photo with each colour channel multiplied by its gain (None: unchanged)."""
    if gains is None:
        return photo
    if len(gains) != 3 or any(not 0 < g <= 4 for g in gains):
        raise FewcellsError(f"demo colour_shift: needs three gains in (0, 4], got {gains!r}")
    shifted = photo.astype(np.float32) * np.asarray(gains, dtype=np.float32) + 0.5
    return np.clip(shifted, 0, 255).astype(np.uint8)


def _mask_path(image_path: str) -> str:
    return f"masks/{Path(image_path).with_suffix('.png').as_posix()}"


def _save(root: Path, image_path: str, image: np.ndarray, mask: np.ndarray) -> None:
    """Write an image as uncompressed RGB TIFF (like ALL-IDB2) and its mask as PNG."""
    Image.fromarray(np.ascontiguousarray(image), "RGB").save(root / image_path, format="TIFF")
    Image.fromarray(np.ascontiguousarray(mask), "RGB").save(
        root / _mask_path(image_path), format="PNG"
    )


def _labels_frame(plan: list[PlannedImage]) -> pd.DataFrame:
    rows = [(item.path, item.label) for item in plan]
    rows += [(item.duplicate_path, item.label) for item in plan if item.duplicate_path]
    return pd.DataFrame(sorted(rows), columns=["path", "label"])


def _duplicates_frame(plan: list[PlannedImage]) -> pd.DataFrame:
    rows = [
        (item.path, item.duplicate_path, item.duplicate_kind)
        for item in plan
        if item.duplicate_path
    ]
    return pd.DataFrame(sorted(rows), columns=["original", "duplicate", "kind"])
