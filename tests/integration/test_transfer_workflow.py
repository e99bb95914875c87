"""Transfer learning as workflow stages on the demo data: one pretraining job, fine-tuned
training jobs that read its checkpoint, and what a config edit plans again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "tests" / "integration" / "configs" / "tiny_transfer.yaml"
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
CHECKPOINT = "results/pretrained/tiny_source/model.ckpt"

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args]
    result = subprocess.run(command, cwd=workdir, env=ENV, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def planned_jobs(workdir: Path, config: Path) -> dict[str, int]:
    """Rule name -> number of jobs a dry run would execute."""
    output = snakemake(workdir, "-n", "--quiet", "rules", "--configfile", str(config)).stdout
    parts = [line.split() for line in output.splitlines()]
    return {p[0]: int(p[1]) for p in parts if len(p) == 2 and p[1].isdigit() and p[0] != "total"}


@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("transfer")
    config = workdir / "config.yaml"
    config.write_text(CONFIG.read_text())
    result = snakemake(workdir, "--cores", "2", "--configfile", str(config))
    return workdir, result.stdout + result.stderr


def test_pretraining_runs_once_before_the_finetuned_jobs(transfer_run):
    workdir, output = transfer_run
    assert output.count("rule pretrain:") == 1
    source = workdir / "results" / "pretrained" / "tiny_source"
    info = json.loads((source / "train_info.json").read_text())
    assert info["classes"] == ["blast", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
    assert info["n_train_images"] + info["n_val_images"] == 60  # every kept demo image
    assert (workdir / "results/logs/tiny_source/pretrain.log").exists()
    assert (workdir / "results/benchmarks/tiny_source/pretrain.tsv").exists()
    assert not (workdir / "results/tiny_source/train").exists()  # the source is not swept
    pretrained_at = (source / "model.ckpt").stat().st_mtime
    saved = torch.load(source / "model.ckpt", map_location="cpu", weights_only=True)
    jobs = sorted((workdir / "results/tiny_finetuned/train").glob("n*/fold*"))
    assert len(jobs) == 4
    for job in jobs:
        assert (job / "model.ckpt").stat().st_mtime > pretrained_at
        info = json.loads((job / "train_info.json").read_text())
        assert info["weights"] == CHECKPOINT and info["phases"]["head"]["epochs"] == 1
        log = workdir / "results/logs/tiny_finetuned/train" / f"{job.parent.name}_{job.name}.log"
        assert f"starting from the weights in {CHECKPOINT}" in log.read_text()
        history = pd.read_csv(job / "history.csv")
        assert history["phase"].iloc[0] == "head" and history["phase"].iloc[-1] == "finetune"
        tuned = torch.load(job / "model.ckpt", map_location="cpu", weights_only=True)
        assert tuned["hyper_parameters"]["model_cfg"]["weights"] == CHECKPOINT
        assert tuned["state_dict"]["model.classifier.weight"].shape == (2, 32)
        assert saved["state_dict"]["model.classifier.weight"].shape == (5, 32)
    scratch = json.loads(
        (workdir / "results/tiny_scratch/train/n6/fold0/train_info.json").read_text()
    )
    assert "weights" not in scratch and "phases" not in scratch
    assert "phase" not in pd.read_csv(workdir / "results/tiny_scratch/train/n6/fold0/history.csv")
    comparison = pd.read_csv(
        workdir / "results/comparisons/tiny_scratch_vs_finetuned/comparison.csv"
    )
    assert set(comparison["experiment"]) == {"tiny_scratch", "tiny_finetuned"}


def _edited(workdir: Path, name: str, edit) -> Path:
    config = yaml.safe_load(CONFIG.read_text())
    edit(config["experiments"])
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_nothing_to_do_after_the_run(transfer_run):
    workdir, _ = transfer_run
    assert planned_jobs(workdir, workdir / "config.yaml") == {}


def test_changing_head_epochs_reruns_the_finetuned_jobs_not_pretraining(transfer_run):
    workdir, _ = transfer_run

    def edit(experiments):
        experiments["tiny_finetuned"]["train"]["finetune"]["head_epochs"] = 2

    jobs = planned_jobs(workdir, _edited(workdir, "head_epochs", edit))
    assert jobs.get("train") == 4  # the fine-tuned experiment's 2 sizes x 2 folds
    assert jobs.get("evaluate_binary") == 1 and jobs.get("compare") == 1
    assert "pretrain" not in jobs
    assert not {"fetch", "manifest", "dedup", "folds", "store"} & set(jobs)


def test_changing_the_pretraining_reruns_it_and_the_finetuned_jobs_only(transfer_run):
    workdir, _ = transfer_run

    def edit(experiments):
        experiments["tiny_source"]["pretrain"]["max_epochs"] = 3

    jobs = planned_jobs(workdir, _edited(workdir, "pretrain_epochs", edit))
    assert jobs.get("pretrain") == 1
    assert jobs.get("train") == 4  # not the 4 from-scratch jobs
    assert jobs.get("evaluate_binary") == 1
