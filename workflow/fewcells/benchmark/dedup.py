"""Deduplication of a folder of generated images with planted copies (`fewcells benchmark
dedup`)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fewcells.training.memory import peak_rss_mb


def _smear(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random 'smear': pale background, 20 discs of random colour and radius, pixel noise."""
    yy, xx = np.ogrid[:size, :size]
    image = np.full((size, size, 3), 220.0, dtype=np.float32)
    for _ in range(20):
        cy, cx = rng.uniform(0, size, 2)
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(10, 40) ** 2
        image[inside] = rng.uniform(60, 200, 3)
    image += rng.normal(0, 4, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_dedup_images(folder: Path, n_images: int, *, n_copies: int, image_size: int) -> None:
    """`n_images` random smears (jpg) listed in labels.csv; the last `n_copies` are shifted
    crops of the first ones (the hardest ALL-IDB2 duplicate kind for a byte checksum)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    n_originals = n_images - n_copies
    margin = 16
    for index in range(n_originals):
        scene = _smear(rng, image_size + margin)
        original = scene[margin // 2 :, margin // 2 :][:image_size, :image_size]
        Image.fromarray(original).save(folder / f"Im{index:05d}.jpg", quality=95)
        if index < n_copies:
            dy, dx = rng.integers(0, margin, 2)
            copy = scene[dy : dy + image_size, dx : dx + image_size]
            Image.fromarray(copy).save(folder / f"Im{n_originals + index:05d}.jpg", quality=95)
    names = [f"Im{index:05d}.jpg" for index in range(n_images)]
    pd.DataFrame({"path": names, "label": "cell"}).to_csv(folder / "labels.csv", index=False)


def benchmark_dedup(*, n_images: int = 20000, threads: int | None = None) -> dict:
    """Deduplicate `n_images` generated images with `fewcells dedup`; time and peak memory."""
    threads = threads or os.cpu_count() or 1
    n_copies = max(1, n_images // 100)
    with tempfile.TemporaryDirectory(prefix="fewcells-dedup-") as tmp:
        folder = Path(tmp) / "img"
        write_dedup_images(folder, n_images, n_copies=n_copies, image_size=257)
        command = [
            sys.executable, "-m", "fewcells.cli", "dedup", str(folder), "--kind", "csv",
            "--threads", str(threads), "--out", str(Path(tmp) / "out"),
        ]  # fmt: skip
        before = peak_rss_mb(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        subprocess.run(command, check=True)
        wall = time.perf_counter() - started
        peak = peak_rss_mb(resource.RUSAGE_CHILDREN)
        summary = json.loads((Path(tmp) / "out" / "dedup_summary.json").read_text())
    result = {
        "images": n_images,
        "threads": threads,
        "wall_seconds": round(wall, 1),
        "peak_rss_mb": round(peak) if peak > before else None,
        "removed": summary["removed"],
        "planted_copies": n_copies,
    }
    print(
        f"dedup of {n_images} generated 257 px images ({n_copies} planted copies) on {threads} "
        f"threads: {wall:.1f} s wall, peak memory {result['peak_rss_mb']} MB, "
        f"{summary['removed']} removed"
    )
    return result
