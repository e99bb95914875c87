"""The cost of whole runs: `snakemake --cores N` on a config in a fresh folder, and the
measured cost of a finished sweep (`fewcells benchmark workflow`, `sweep`)."""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fewcells.errors import FewcellsError
from fewcells.training.memory import peak_rss_mb


def benchmark_workflow(
    repo: Path, configfiles: list[Path], *, cores: int, workdir: Path | None = None
) -> dict:
    """Wall time and peak memory (largest job) of `snakemake --cores N` in a fresh folder.

    The folder is a temporary one, or `workdir` (created; kept, with the results).
    """
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fewcells-")))
        elif workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
            raise FewcellsError(f"benchmark workflow: {workdir} is not an empty folder")
        workdir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"),
            "--cores", str(cores), "--quiet", "progress",
            "--configfile", *map(str, configfiles),
        ]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, cwd=workdir, check=True)
        wall = time.perf_counter() - started
        jobs = [pd.read_csv(p, sep="\t") for p in workdir.glob("results/benchmarks/**/*.tsv")]
        peak_job = max(float(job["max_rss"].max()) for job in jobs) if jobs else float("nan")
    result = {
        "cores": cores,
        "wall_seconds": round(wall, 1),
        "peak_job_rss_mb": round(peak_job),
        "peak_process_rss_mb": round(peak_rss_mb(resource.RUSAGE_CHILDREN)),
    }
    print(
        f"workflow ({', '.join(p.name for p in configfiles)}) on {cores} cores: "
        f"{wall:.0f} s wall; peak memory of one job {peak_job:.0f} MB "
        f"(largest process {result['peak_process_rss_mb']} MB)"
    )
    return result


def sweep_cost(
    train_root: Path, *, cores: int, sizes: list[int] | None = None, folds: int | None = None
) -> dict:
    """Epochs per training and job seconds of a finished sweep (EXPERIMENT/train).

    A stacked engine's job (train_info's networks_in_job) counts its seconds once, shared
    among its networks. With `sizes` and `folds`, also projects the wall time of a sweep of
    those sizes x folds on `cores` cores: job seconds per size interpolated linearly between
    the sizes measured.
    """
    paths = sorted(train_root.glob("n*/fold*/train_info.json"))
    if not paths:
        raise FewcellsError(f"{train_root}: no n*/fold*/train_info.json files")
    frame = pd.DataFrame([json.loads(p.read_text()) for p in paths])
    if "networks_in_job" in frame:
        frame["seconds"] /= frame["networks_in_job"].fillna(1)
    result = {
        "trainings": len(frame),
        "epochs_median": float(frame["epochs_run"].median()),
        "epochs_max": int(frame["epochs_run"].max()),
        "job_seconds_total": round(float(frame["seconds"].sum())),
        "wall_seconds_on_cores": round(float(frame["seconds"].sum()) / cores),
        "peak_rss_mb_max": round(float(frame["peak_rss_mb"].max())),
    }
    print(
        f"sweep {train_root}: {len(frame)} trainings, epochs median {result['epochs_median']:.0f}"
        f" max {result['epochs_max']}; {result['job_seconds_total']} job-seconds = "
        f"{result['wall_seconds_on_cores'] / 60:.0f} min on {cores} cores; "
        f"peak memory per job {result['peak_rss_mb_max']} MB"
    )
    if sizes and folds:
        per_size = frame.groupby("size")["seconds"].mean()
        seconds = np.interp(sizes, per_size.index.to_numpy(), per_size.to_numpy()) * folds
        result["projected_trainings"] = len(sizes) * folds
        result["projected_wall_seconds"] = round(float(seconds.sum()) / cores)
        print(
            f"projected: {len(sizes)} sizes x {folds} folds = {len(sizes) * folds} trainings, "
            f"{result['projected_wall_seconds'] / 3600:.1f} h on {cores} cores"
        )
    return result
