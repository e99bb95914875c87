"""`fewcells benchmark predict`: images per second of the paper CNN's prediction on the CPU,
with the compiled CPU kernel (as prediction runs it) and with PyTorch's layers, and the
speed of reading and fitting images (the other half of a prediction's time)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fewcells.predict.images import prepare_image
from fewcells.training.kernels import loader
from fewcells.training.memory import peak_rss_mb
from fewcells.training.models import PaperCNN, to_model_input


def _rate(model: PaperCNN, batch: torch.Tensor, n_batches: int) -> float:
    with torch.inference_mode():
        torch.softmax(model(to_model_input(batch)), dim=1)  # warm-up
        started = time.perf_counter()
        for _ in range(n_batches):
            torch.softmax(model(to_model_input(batch)), dim=1)
        seconds = time.perf_counter() - started
    return n_batches * len(batch) / seconds


def _reading_rate(n_files: int, image_size: int, shape: tuple[int, int] = (363, 360)) -> float:
    """Images per second of load_rgb + fit_image (resize) on JPEG files the size of PBC's."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(n_files):
            path = Path(folder) / f"cell_{i}.jpg"
            pixels = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
            paths.append(str(path))
        started = time.perf_counter()
        for path in paths:
            prepare_image(path, image_size, "resize")
        return n_files / (time.perf_counter() - started)


def benchmark_predict(
    *,
    n_images: int = 4096,
    image_size: int = 257,
    batch_size: int = 64,
    threads: int | None = None,
    repeats: int = 3,
) -> dict:
    """Median images/s over `repeats` of the paper CNN (2 classes) on `n_images` images of
    `image_size` px, batches of `batch_size`, with and without the compiled kernel."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    model = PaperCNN(2, image_size).eval()
    batch = torch.from_numpy(
        np.random.default_rng(0).integers(0, 256, (batch_size, image_size, image_size, 3), np.uint8)
    )
    n_batches = max(1, n_images // batch_size)
    kernel, how = loader.load_kernel()
    result = {
        "image_size": image_size,
        "batch_size": batch_size,
        "images": n_batches * batch_size,
        "threads": torch.get_num_threads(),
        "cpu_kernel": how,
    }
    for label, fused in (("compiled_kernel", True), ("pytorch", False)):
        if fused and kernel is None:
            continue
        model.fused_cpu_kernel = fused
        rates = sorted(_rate(model, batch, n_batches) for _ in range(repeats))
        result[f"images_per_second_{label}"] = rates[len(rates) // 2]
    result["reading_images_per_second"] = _reading_rate(min(256, n_images), image_size)
    result["peak_rss_mb"] = peak_rss_mb()
    load = os.getloadavg()[0]
    result["load_average_1min"] = load
    lines = [
        f"predict benchmark: paper CNN, {image_size} px, batches of {batch_size}, "
        f"{result['threads']} thread(s), {result['images']} images, median of {repeats}",
    ]
    for label in ("compiled_kernel", "pytorch"):
        key = f"images_per_second_{label}"
        if key in result:
            lines.append(f"  network, {label.replace('_', ' ')}: {result[key]:,.0f} images/s")
    lines.append(
        f"  reading + fitting JPEGs (363 x 360 -> {image_size}): "
        f"{result['reading_images_per_second']:,.0f} images/s per thread"
    )
    lines.append(f"  1-minute load average during the run: {load:.2f}")
    print("\n".join(lines), file=sys.stdout)
    return result
