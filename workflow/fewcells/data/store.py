"""A compact uint8 tensor store of the deduplicated images that training memory-maps."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fewcells.atomic import atomic_path
from fewcells.contracts import INDEX_COLUMNS, read_table
from fewcells.data.manifest import load_rgb
from fewcells.errors import FewcellsError

FITS = ("pad", "resize")
# An image with a side below this share of the store's side is mostly padding (or a blurred
# enlargement) in the store: a thumbnail or a wrong file, so it is named in a warning.
SMALL_IMAGE_SHARE = 0.5

_LOG = logging.getLogger(__name__)


def fit_image(image: np.ndarray, size: int, fit: str) -> np.ndarray:
    """Bring an (H, W, 3) image to (size, size, 3).

    "pad": centre it, repeating edge pixels where it is smaller and cropping the centre
    where it is larger (ALL-IDB2's border crops); "resize": bilinear resize.
    """
    if fit == "resize":
        resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(resized)
    if fit != "pad":
        raise FewcellsError(f"store.fit must be one of {FITS}, not {fit!r}")
    height, width = image.shape[:2]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    image = image[top : top + size, left : left + size]
    pad_y, pad_x = size - image.shape[0], size - image.shape[1]
    padding = ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2), (0, 0))
    return np.pad(image, padding, mode="edge")


def build_store(kept: pd.DataFrame, out_dir: Path, image_size: int, fit: str = "pad") -> None:
    """Write out_dir/images.npy (N, size, size, 3) uint8 and out_dir/index.csv, atomically.

    Images are decoded one at a time into a memory-mapped file, so memory stays flat. An
    image with a side shorter than half of `image_size` is named in a warning; their number
    and ids are recorded in out_dir/store_info.json.
    """
    if image_size < 1:
        raise FewcellsError(
            f"store image size must be a positive number of pixels, not {image_size}"
        )
    kept = kept.sort_values("image_id").reset_index(drop=True)
    if kept.empty:
        raise FewcellsError(f"store {out_dir}: no images to store")
    needed = len(kept) * image_size * image_size * 3 + (1 << 20)
    parent = Path(out_dir).resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise FewcellsError(
            f"store {out_dir}: needs {needed / 2**20:.0f} MiB, only {free / 2**20:.0f} MiB "
            f"free in {parent}"
        )
    with atomic_path(out_dir, directory=True) as tmp:
        images = np.lib.format.open_memmap(
            tmp / "images.npy",
            mode="w+",
            dtype=np.uint8,
            shape=(len(kept), image_size, image_size, 3),
        )
        small = []
        for row, (image_id, path) in enumerate(zip(kept["image_id"], kept["path"], strict=True)):
            image = load_rgb(path)
            height, width = image.shape[:2]
            if min(height, width) < SMALL_IMAGE_SHARE * image_size:
                small.append(image_id)
                _LOG.warning(
                    "%s: %d x %d px, far smaller than image.size %d; the store %s it",
                    path,
                    width,
                    height,
                    image_size,
                    "pads" if fit == "pad" else "enlarges",
                )
            images[row] = fit_image(image, image_size, fit)
            if (row + 1) % 1000 == 0:
                print(f"store: {row + 1}/{len(kept)} images", file=sys.stderr)
        images.flush()
        del images
        index = pd.DataFrame(
            {"row": np.arange(len(kept)), "image_id": kept["image_id"], "label": kept["label"]},
            columns=INDEX_COLUMNS,
        )
        index.to_csv(tmp / "index.csv", index=False)
        info = {
            "images": len(kept),
            "image_size": image_size,
            "fit": fit,
            "small_images": len(small),
            "small_image_ids": small,
        }
        (tmp / "store_info.json").write_text(json.dumps(info, indent=2) + "\n")
    if small:
        _LOG.warning(
            "store %s: %d image(s) with a side below %d px (half of image.size %d), see "
            "store_info.json",
            out_dir,
            len(small),
            -(-image_size // 2),
            image_size,
        )


def open_store(
    store_dir: str | os.PathLike, image_size: int | None = None
) -> tuple[np.ndarray, pd.DataFrame]:
    """The memory-mapped STORE/images.npy and STORE/index.csv, checked: uint8 images
    (N, H, W, C), `image_size` px square where it is given, index rows within the images."""
    store_dir = Path(store_dir)
    images_path = store_dir / "images.npy"
    try:
        images = np.load(images_path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise FewcellsError(f"{images_path}: cannot open the image store: {error}") from error
    if images.dtype != np.uint8 or images.ndim != 4:
        raise FewcellsError(
            f"{images_path}: expected uint8 images (N, H, W, C), "
            f"found {images.dtype} {images.shape}"
        )
    if image_size is not None and images.shape[1:3] != (image_size,) * 2:
        raise FewcellsError(
            f"{images_path}: images are {images.shape[1]}x{images.shape[2]} px, "
            f"the network expects image_size {image_size}"
        )
    index = read_table(store_dir / "index.csv", INDEX_COLUMNS)
    if not index["row"].between(0, len(images) - 1).all():
        raise FewcellsError(f"{store_dir / 'index.csv'}: rows outside images.npy")
    return images, index
