"""Training throughput: the workflow's training path beside a plain PyTorch loop, and the
whole-sweep stacked engine (`fewcells benchmark training`, `stacked-sweep`)."""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fewcells.benchmark.selection import selection_cost
from fewcells.data.folds import assign_folds, training_set
from fewcells.errors import FewcellsError
from fewcells.training.augment import BatchAugment
from fewcells.training.datamodule import EVAL_BATCH_SIZE
from fewcells.training.memory import peak_rss_mb
from fewcells.training.models import build_model, to_model_input
from fewcells.training.protocol import OPTIMIZERS, fill_train_defaults
from fewcells.training.run import run_training


def write_synthetic_experiment(root: Path, *, n_images: int = 250, image_size: int = 257) -> None:
    """A store (images.npy, index.csv) and folds (folds.csv, classes.json) of random cells.

    Throughput does not depend on pixel content; the layout is ALL-IDB2's (two balanced
    classes, 10 folds of 25 test and 25 validation images, a pool of 200).
    """
    rng = np.random.default_rng(0)
    (root / "store").mkdir(parents=True, exist_ok=True)
    (root / "folds").mkdir(parents=True, exist_ok=True)
    images = rng.integers(0, 256, (n_images, image_size, image_size, 3), dtype=np.uint8)
    np.save(root / "store" / "images.npy", images)
    ids = [f"Im{i:03d}" for i in range(n_images)]
    labels = ["healthy", "blast"] * (n_images // 2) + ["blast"] * (n_images % 2)
    kept = pd.DataFrame({"image_id": ids, "label": labels})
    kept.assign(row=np.arange(n_images))[["row", "image_id", "label"]].to_csv(
        root / "store" / "index.csv", index=False
    )
    classes = [{"name": "healthy", "labels": ["healthy"]}, {"name": "blast", "labels": ["blast"]}]
    folds, names = assign_folds(kept, classes, k=10, n_val=25)
    folds.to_csv(root / "folds" / "folds.csv", index=False)
    (root / "folds" / "classes.json").write_text(json.dumps({"classes": names, "task": "binary"}))


def plain_loop(
    root: Path,
    *,
    size: int,
    epochs: int,
    threads: int,
    image_size: int = 257,
    fold: int = 0,
    model_name: str = "paper_cnn",
) -> dict:
    """A plain PyTorch training loop on the same data as the workflow path, as a baseline.

    One process, `threads` torch threads, the fold's images in memory, the network
    (`model_name`, the paper CNN by default) in channels-last, RMSprop, batch 5, flips +
    rotation, and a validation pass per epoch.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    images = torch.from_numpy(np.load(root / "store" / "images.npy"))
    folds = pd.read_csv(root / "folds" / "folds.csv")
    index = pd.read_csv(root / "store" / "index.csv")
    rows = dict(zip(index["image_id"], index["row"], strict=True))
    train = training_set(folds, fold, size)
    val = folds[(folds["fold"] == fold) & (folds["role"] == "val")]
    train_x, val_x = (images[[rows[i] for i in part["image_id"]]] for part in (train, val))
    train_y, val_y = (torch.tensor(part["target"].to_numpy()) for part in (train, val))
    cfg = fill_train_defaults({})
    model = build_model({"name": model_name}, 2, image_size)
    model = model.to(memory_format=torch.channels_last)
    optimizer = OPTIMIZERS[cfg["optimizer"]](model.parameters(), cfg)
    augment = BatchAugment()
    started = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(train_x)).split(cfg["batch_size"]):
            x = augment(to_model_input(train_x[batch])).contiguous(
                memory_format=torch.channels_last
            )
            loss = F.cross_entropy(model(x), train_y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            for batch in torch.arange(len(val_x)).split(EVAL_BATCH_SIZE):
                x = to_model_input(val_x[batch]).contiguous(memory_format=torch.channels_last)
                F.cross_entropy(model(x), val_y[batch])
    seconds = time.perf_counter() - started
    return {"image_steps": len(train_x) * epochs, "seconds": seconds}


def _workflow_job(
    root: str, fold: int, size: int, epochs: int, model_name: str, barrier, results
) -> None:
    """One training job as the workflow runs it (single thread), after all jobs are ready."""
    train_cfg = {"max_epochs": epochs, "patience": epochs, "threads": 1}
    barrier.wait()
    info = run_training(
        Path(root) / "store",
        Path(root) / "folds" / "folds.csv",
        Path(root) / "folds" / "classes.json",
        fold,
        size,
        train_cfg,
        {"name": model_name},
        Path(root) / "train" / f"n{size}" / f"fold{fold}",
        image_size=257,
    )
    results.put(info)


def workflow_path(
    root: Path, *, size: int, epochs: int, processes: int, model_name: str = "paper_cnn"
) -> dict:
    """`processes` concurrent single-thread training jobs (different folds), as Snakemake runs them.

    Throughput = all jobs' training image-steps / the longest job's fit time.
    """
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    jobs = [
        context.Process(
            target=_workflow_job,
            args=(str(root), fold, size, epochs, model_name, barrier, results),
        )
        for fold in range(processes)
    ]
    for job in jobs:
        job.start()
    infos = [results.get() for _ in jobs]
    for job in jobs:
        job.join()
        if job.exitcode != 0:
            raise FewcellsError(f"benchmark: a training process failed (exit {job.exitcode})")
    return {
        "image_steps": sum(info["n_train_images"] * info["epochs_run"] for info in infos),
        "seconds": max(info["fit_seconds"] for info in infos),
        "peak_rss_mb": max(info["peak_rss_mb"] for info in infos),
        "cpu_kernel": infos[0]["cpu_kernel"],
    }


def stacked_path(
    root: Path,
    *,
    sizes: list[int],
    epochs: int,
    threads: int,
    folds: int = 10,
    engine: str = "stacked",
) -> dict:
    """A stacked engine's job: `folds` x `sizes` networks trained at once for `epochs` epochs
    each (patience = epochs: no early stopping)."""
    from fewcells.training.stacked import run_stacked_training

    train_cfg = {"max_epochs": epochs, "patience": epochs, "threads": threads}
    infos = run_stacked_training(
        root / "store",
        root / "folds" / "folds.csv",
        root / "folds" / "classes.json",
        list(range(folds)),
        sizes,
        train_cfg,
        {"name": "paper_cnn"},
        root / f"train-{engine}",
        image_size=257,
        engine=engine,
    )
    return {
        "networks": len(infos),
        "image_steps": sum(info["n_train_images"] * info["epochs_run"] for info in infos),
        "seconds": infos[0]["fit_seconds"],
        "device": infos[0]["device"],
    }


def benchmark_stacked_sweep(
    *, sizes: list[int], folds: int = 10, epochs: int = 10, threads: int | None = None
) -> dict:
    """`folds` x `sizes` paper CNNs (257 px, batch 5) trained in one stacked_sweep job for
    `epochs` epochs each (patience = epochs: no early stopping), on the GPU when one is
    visible; prints and returns the wall time and image-steps per second of fit time."""
    if not sizes or max(sizes) > 200 or folds > 10:
        raise FewcellsError(
            "benchmark stacked-sweep: sizes must be 1-200 and folds at most 10 (ALL-IDB2's "
            f"layout: a pool of 200 per fold, 10 folds), not sizes {sizes}, folds {folds}"
        )
    threads = threads or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="fewcells-bench-") as tmp:
        root = Path(tmp)
        write_synthetic_experiment(root)
        started = time.perf_counter()
        job = stacked_path(
            root, sizes=sizes, epochs=epochs, threads=threads, folds=folds, engine="stacked_sweep"
        )
        wall = time.perf_counter() - started
    image_steps, fit = job["image_steps"], job["seconds"]
    result = {
        "device": job["device"],
        "threads": threads,
        "networks": job["networks"],
        "sizes": sizes,
        "folds": folds,
        "epochs": epochs,
        "image_steps": image_steps,
        "fit_seconds": round(fit, 1),
        "wall_seconds": round(wall, 1),
        "image_steps_per_s": round(image_steps / fit, 1),
        "peak_rss_mb": round(peak_rss_mb()),
    }
    print(
        f"stacked_sweep engine on {result['device']}, {threads} threads: {job['networks']} paper "
        f"CNNs (sizes {min(sizes)}-{max(sizes)} x {folds} folds), {epochs} epochs each, 257 px, "
        f"batch 5:\n  {image_steps} image-steps in {fit:.1f} s of fit ({wall:.1f} s wall): "
        f"{result['image_steps_per_s']:.1f} image-steps/s; peak memory {result['peak_rss_mb']} MB"
    )
    return result


def _range_note(rates: list[float]) -> str:
    """' (median of N: low-high)' for repeated measurements, '' for one."""
    if len(rates) == 1:
        return ""
    return f" (median of {len(rates)}: {min(rates):.1f}-{max(rates):.1f})"


def benchmark_training(
    *,
    size: int = 100,
    epochs: int = 30,
    cores: int | None = None,
    model_name: str = "paper_cnn",
    repeats: int = 1,
) -> dict:
    """Workflow training path vs plain loop on `cores` cores; prints and returns the numbers.

    With `repeats` > 1 the two are measured alternately that many times (a shared machine's
    speed drifts) and the medians are reported, with each one's range.
    """
    if repeats < 1:
        raise FewcellsError(f"benchmark training: --repeats must be at least 1, not {repeats}")
    cores = cores or os.cpu_count() or 1
    plain_rates, workflow_rates, peaks, kernels, fits = [], [], [], set(), []
    with tempfile.TemporaryDirectory(prefix="fewcells-bench-") as tmp:
        root = Path(tmp)
        write_synthetic_experiment(root)
        for _ in range(repeats):
            plain = plain_loop(root, size=size, epochs=epochs, threads=cores, model_name=model_name)
            workflow = workflow_path(
                root, size=size, epochs=epochs, processes=cores, model_name=model_name
            )
            plain_rates.append(plain["image_steps"] / plain["seconds"])
            workflow_rates.append(workflow["image_steps"] / workflow["seconds"])
            peaks.append(workflow["peak_rss_mb"])
            kernels.add(workflow["cpu_kernel"])
            fits.append(workflow["seconds"])
        selection = selection_cost(root, root / "train" / f"n{size}" / "fold0")
        stacked = (
            stacked_path(root, sizes=[size], epochs=epochs, threads=cores)
            if model_name == "paper_cnn"
            else None
        )
    plain_rate, workflow_rate = float(np.median(plain_rates)), float(np.median(workflow_rates))
    result = {
        "model": model_name,
        "cores": cores,
        "training_size": size,
        "epochs": epochs,
        "repeats": repeats,
        "plain_loop_image_steps_per_s": round(plain_rate, 1),
        "workflow_image_steps_per_s": round(workflow_rate, 1),
        "plain_loop_runs": [round(rate, 1) for rate in plain_rates],
        "workflow_runs": [round(rate, 1) for rate in workflow_rates],
        "speedup": round(workflow_rate / plain_rate, 2),
        "training_job_peak_rss_mb": round(max(peaks)),
        "workflow_cpu_kernel": ", ".join(sorted(kernels)),
        "selection_pool_images": selection["n_pool"],
        "selection_diverse_s": round(selection["diverse_seconds"], 3),
        "selection_uncertain_round_s": round(selection["uncertain_seconds"], 3),
        "training_job_fit_s": round(float(np.median(fits)), 3),
    }

    print(
        f"training throughput, {model_name}, 257 px, batch 5, n = {size}, {epochs} epochs, "
        f"{cores} cores:\n"
        f"  plain PyTorch loop, 1 process x {cores} threads: {plain_rate:8.1f} image-steps/s"
        f"{_range_note(plain_rates)}\n"
        f"  workflow path, {cores} jobs x 1 thread:          {workflow_rate:8.1f} image-steps/s"
        f"{_range_note(workflow_rates)}; first blocks: {result['workflow_cpu_kernel']}\n"
        f"  ratio workflow / plain: {result['speedup']:.2f}x; peak memory of one training job: "
        f"{max(peaks):.0f} MB\n"
        f"  selection, one fold's pool of {selection['n_pool']} images: diverse (features + "
        f"k-center) {result['selection_diverse_s']:.2f} s; uncertain round (load the n = {size} "
        f"network, score the pool) {result['selection_uncertain_round_s']:.2f} s; next to one "
        f"training job's fit {result['training_job_fit_s']:.2f} s"
    )
    if stacked is not None:
        stacked_rate = stacked["image_steps"] / stacked["seconds"]
        result["stacked_image_steps_per_s"] = round(stacked_rate, 1)
        result["stacked_speedup"] = round(stacked_rate / plain_rate, 2)
        print(
            f"  stacked engine, 1 job x {cores} threads, 10 folds on {stacked['device']}: "
            f"{stacked_rate:8.1f} image-steps/s ({result['stacked_speedup']:.2f}x plain)"
        )
    return result
