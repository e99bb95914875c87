"""Benchmarks that print numbers: training throughput, the demo workflow, deduplication.

- `training`: image-steps per second of a network (the paper CNN by default; `--model`
  for the others; 257 px, batch 5, the paper's augmentation) through the workflow's
  training path (`run_training`, one single-thread process per core, as
  `snakemake --cores N` schedules training jobs), next to a plain single-process PyTorch
  loop (channels-last, data in memory, all cores) measured in the same run; both count
  training images per second of fit time, validation included.
  It also times the selection strategies' own cost on one fold's pool
  (fewcells.benchmark.selection): diverse (colour/texture features + k-center) and one
  uncertain round (loading the trained network, scoring the pool), next to one training
  job's fit time.
- `workflow`: wall time and peak memory of `snakemake --cores N` on a config (the demo by
  default) in a fresh temporary folder.
- `dedup`: hashing and confirming a folder of N generated images (with planted copies),
  wall time and the peak memory of the dedup process.
- `sweep`: epochs per training and the measured cost of a finished training-size sweep
  (its train_info.json files), with the projected wall time on N cores.
- `stacked-sweep`: the whole-sweep stacked engine (train.engine: stacked_sweep) on this
  machine's device (a GPU when one is visible): every fold x size of ALL-IDB2's layout in one
  job for a fixed number of epochs; wall time and image-steps per second.
"""

from fewcells.benchmark.dedup import benchmark_dedup, write_dedup_images
from fewcells.benchmark.training import (
    benchmark_stacked_sweep,
    benchmark_training,
    plain_loop,
    write_synthetic_experiment,
)
from fewcells.benchmark.workflow import benchmark_workflow, sweep_cost

__all__ = [
    "benchmark_dedup",
    "benchmark_stacked_sweep",
    "benchmark_training",
    "benchmark_workflow",
    "plain_loop",
    "sweep_cost",
    "write_dedup_images",
    "write_synthetic_experiment",
]
