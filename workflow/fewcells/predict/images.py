"""An image set to classify, read with exactly the preprocessing of training.

The set is given like a data set (`kind` + `source`; labels optional: kind `folder`, or a
csv table without a `label` column). Every file is checked as the manifest checks it
(`on_bad_image`), then read one batch at a time: `manifest.load_rgb` (RGBA composited on
white, 16-bit to 8-bit), an optional rescaling for another pixel size, `store.fit_image`
(image.size, image.fit) and, in the network, `model.to_model_input` (pixels / 255).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fewcells.data.manifest import KINDS, UNLABELLED_KINDS, build_manifest, load_rgb
from fewcells.data.store import fit_image
from fewcells.errors import FewcellsError

IMAGE_SET_KINDS = (*KINDS, *UNLABELLED_KINDS, "demo")
SKIP_ADVICE = "set the predict entry's images.on_bad_image: skip to leave them out"


def fetch_image_set(images: dict, work_dir: Path) -> tuple[Path, str]:
    """The image root of the set `images` (a folder used in place, an archive or a URL
    extracted under `work_dir`, a demo set generated there) and the manifest kind to read
    it with."""
    from fewcells.data.demo import generate_demo
    from fewcells.data.fetch import fetch

    kind = images.get("kind")
    if kind not in IMAGE_SET_KINDS:
        raise FewcellsError(
            f"images.kind: unknown kind {kind!r}; allowed: {', '.join(IMAGE_SET_KINDS)}"
        )
    work_dir = Path(work_dir)
    if kind == "demo":
        files = work_dir / "demo"
        settings = dict(images.get("demo") or {})
        if settings.get("colour_shift") is not None:
            settings["colour_shift"] = tuple(settings["colour_shift"])
        generate_demo(files, n_duplicates=0, **settings)
        return files, "csv"
    if "source" not in images:
        raise FewcellsError(f"images: kind {kind!r} needs the key 'source'")
    return fetch(images["source"], work_dir, progress=False), kind


def image_table(images: dict, work_dir: Path) -> pd.DataFrame:
    """One row per readable image of the set: the manifest's columns (label "" where the
    set has none); bad files are an error or skipped, as `images.on_bad_image` says."""
    root, kind = fetch_image_set(images, work_dir)
    return build_manifest(
        root,
        kind,
        on_bad_image=images.get("on_bad_image", "error"),
        labels_csv=images.get("labels_csv", "labels.csv"),
        annotations=images.get("annotations"),
        skip_advice=SKIP_ADVICE,
        require_labels=False,
    )


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """An (H, W, 3) uint8 image enlarged (factor > 1) or shrunk by `factor`, bilinear: for
    images whose pixels cover another physical size than the training images'."""
    if factor == 1.0:
        return image
    if factor <= 0:
        raise FewcellsError(f"rescale must be positive, got {factor}")
    height, width = image.shape[:2]
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def prepare_image(path: str, image_size: int, fit: str, rescale: float = 1.0) -> np.ndarray:
    """One image as training sees it in the tensor store: (image_size, image_size, 3) uint8."""
    return fit_image(rescale_image(load_rgb(path), rescale), image_size, fit)


def image_batches(
    paths: Sequence[str],
    image_size: int,
    fit: str,
    *,
    rescale: float = 1.0,
    batch_size: int = 64,
    progress_every: int = 5000,
) -> Iterator[np.ndarray]:
    """The images of `paths` in order, `batch_size` at a time, as uint8 (B, size, size, 3):
    memory holds one batch, whatever the number of images."""
    total = len(paths)
    for start in range(0, total, batch_size):
        chunk = paths[start : start + batch_size]
        batch = np.empty((len(chunk), image_size, image_size, 3), dtype=np.uint8)
        for i, path in enumerate(chunk):
            batch[i] = prepare_image(path, image_size, fit, rescale)
        done = start + len(chunk)
        if progress_every and (done // progress_every) > (start // progress_every):
            print(f"predict: {done}/{total} images", file=sys.stderr)
        yield batch
