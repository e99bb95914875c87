"""Snakemake runs of the whole workflow on generated demo data, in a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "integration" / "configs" / "tiny_demo.yaml"
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

pytestmark = pytest.mark.slow


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run Snakemake on the repository's Snakefile with `workdir` as working directory."""
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args]
    result = subprocess.run(command, cwd=workdir, env=ENV, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule name -> number of jobs a dry run would execute."""
    output = snakemake(workdir, "-n", "--quiet", "rules", *args).stdout
    counts = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] not in ("total", "job"):
            counts[parts[0]] = int(parts[1])
    return counts


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("tiny")
    config = workdir / "config.yaml"
    config.write_text(TINY.read_text())
    snakemake(workdir, "--cores", "2", "--configfile", str(config))
    return workdir


def test_demo_workflow_writes_every_output(tiny_run):
    results = tiny_run / "results"
    summary = json.loads((results / "datasets/tiny/dedup/dedup_summary.json").read_text())
    assert summary["images"] == 5 * 12 + 10 and summary["removed"] == 10
    folds = pd.read_csv(results / "tiny_binary/folds/folds.csv")
    assert folds[folds.role == "test"].image_id.is_unique
    for experiment, figures in [
        ("tiny_binary", ["roc_mean.png", "auc_boxplot.png"]),
        ("tiny_multiclass", ["f1_boxplot.png", "confusion_matrix.png"]),
    ]:
        evaluation = results / experiment / "evaluation"
        for name in [
            "summary.md",
            "metrics.csv",
            "loss_curves.png",
            "learning_curve.png",
            *figures,
        ]:
            assert (evaluation / name).stat().st_size > 0, name
    metrics = pd.read_csv(results / "tiny_binary/evaluation/metrics.csv")
    assert sorted(metrics["size"].unique()) == [6, 12] and len(metrics) == 4
    predictions = pd.read_csv(results / "tiny_binary/train/n12/fold1/predictions.csv")
    assert {"p_other", "p_blast"} <= set(predictions.columns)
    assert ((predictions.p_other + predictions.p_blast - 1).abs() < 1e-5).all()
    assert (results / "logs/tiny_binary/train/n6_fold0.log").exists()
    assert (results / "benchmarks/tiny_binary/train/n6_fold0.tsv").exists()


def test_report_describes_the_run_and_holds_every_figure(tiny_run):
    report = tiny_run / "report.zip"
    snakemake(tiny_run, "--report", str(report), "--configfile", str(tiny_run / "config.yaml"))
    import zipfile

    with zipfile.ZipFile(report) as archive:
        names = archive.namelist()
        text = "".join(
            archive.read(name).decode("utf-8", "replace")
            for name in names
            if name.endswith((".html", ".js"))
        )
    figures = sorted(
        path.name
        for stage in ("evaluation", "explain", "tsne")
        for path in (tiny_run / "results").glob(f"*/{stage}/**/*.png")
    )
    assert figures
    for figure in set(figures):
        assert any(name.endswith(figure) for name in names), figure
    assert "how many annotated single-cell images" in text


def test_nothing_to_do_after_a_complete_run(tiny_run):
    assert planned_jobs(tiny_run, "--configfile", str(tiny_run / "config.yaml")) == {}


def test_adding_a_size_plans_only_its_jobs_and_the_evaluation(tiny_run):
    config = yaml.safe_load(TINY.read_text())
    config["experiments"]["tiny_binary"]["folds"]["sizes"] = [6, 12, 18]
    bigger = tiny_run / "bigger.yaml"
    bigger.write_text(yaml.safe_dump(config))
    jobs = planned_jobs(tiny_run, "--configfile", str(bigger))
    assert jobs.get("train") == 2  # size 18, two folds
    assert jobs.get("evaluate_binary") == 1
    assert "evaluate_multiclass" not in jobs
    assert not {"fetch", "manifest", "dedup", "store"} & set(jobs)


def _planned_after_edit(tiny_run, name: str, edit) -> dict[str, int]:
    config = yaml.safe_load(TINY.read_text())
    edit(config)
    path = tiny_run / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return planned_jobs(tiny_run, "--configfile", str(path))


def test_changing_patience_reruns_training_and_what_follows_only(tiny_run):
    def edit(config):
        config["experiments"]["tiny_binary"]["train"]["patience"] = 2

    jobs = _planned_after_edit(tiny_run, "patience", edit)
    assert jobs.get("train") == 4  # two sizes x two folds of tiny_binary
    assert jobs.get("evaluate_binary") == 1 and jobs.get("tsne") == 1
    assert not {"fetch", "manifest", "dedup", "folds", "store", "evaluate_multiclass"} & set(jobs)


def test_changing_a_plot_option_reruns_only_the_plots(tiny_run):
    def edit(config):
        config["experiments"]["tiny_binary"]["plots"] = {"roc_sizes": [12]}

    assert _planned_after_edit(tiny_run, "plots", edit) == {"evaluate_binary": 1, "all": 1}


@pytest.mark.parametrize("module", ["training/models.py", "contracts.py"])
def test_editing_the_training_code_retrains(tiny_run, module):
    # Snakemake compares checksums of inputs it did not make: edit the content, then restore.
    code = REPO / "workflow" / "fewcells" / module
    text, before = code.read_bytes(), code.stat()
    code.write_bytes(text + b"# an edit\n")
    try:
        jobs = planned_jobs(tiny_run, "--configfile", str(tiny_run / "config.yaml"))
    finally:
        code.write_bytes(text)
        os.utime(code, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert jobs.get("train") == 4 + 2  # every training job of both experiments
    assert not {"fetch", "manifest", "dedup", "folds", "store"} & set(jobs)


def test_invalid_config_stops_before_any_job(tmp_path):
    config = yaml.safe_load(TINY.read_text())
    config["experiments"]["tiny_binary"]["folds"]["sizes"] = [-5]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--cores", "1", "--configfile", str(bad), check=False)
    assert result.returncode != 0
    assert "experiments.tiny_binary.folds.sizes[0]" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


def _real_config(data: Path, tmp_path: Path) -> Path:
    config = {
        "run": [],
        "datasets": {
            "all_idb2": {"kind": "all_idb2", "source": {"path": str(data / "ALL_IDB2" / "img")}},
            "pbc": {"kind": "pbc", "source": {"path": str(data / "PBC_subset")}},
            "aml": {
                "kind": "aml_tcia",
                "source": {"path": str(data / "AML_Cytomorphology_LMU_sample")},
            },
        },
        "experiments": {"placeholder": {"dataset": "all_idb2", "folds": {"sizes": [10]}}},
    }
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.realdata
def test_real_data_sets_through_the_data_stages(real_data, tmp_path):
    config = _real_config(real_data, tmp_path)
    targets = [
        "results/datasets/all_idb2/dedup/dedup_summary.json",
        "results/datasets/pbc/manifest.csv",
        "results/datasets/aml/manifest.csv",
    ]
    snakemake(tmp_path, *targets, "--cores", "2", "--configfile", str(config))
    dedup = json.loads((tmp_path / targets[0]).read_text())
    assert (dedup["images"], dedup["kept"], dedup["removed"]) == (260, 250, 10)
    pbc = pd.read_csv(tmp_path / targets[1])
    assert len(pbc) == 3200 and pbc.label.value_counts().eq(400).all()
    aml = pd.read_csv(tmp_path / targets[2], keep_default_na=False)
    assert len(aml) == 45
    assert aml.set_index("image_id").loc["IG/PMB_0013", "label"] == "PMB"


def test_a_moved_checkout_keeps_its_trainings(tmp_path):
    """The training code is a relative input: a checkout moved (or cloned) with its results
    does not retrain."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("Snakefile", "workflow", "profiles", "envs"):
        source = REPO / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
            shutil.copytree(source, checkout / name, ignore=ignore)
        else:
            shutil.copy2(source, checkout / name)
    config = yaml.safe_load(TINY.read_text())
    config["run"] = ["tiny_binary"]
    config["experiments"] = {"tiny_binary": config["experiments"]["tiny_binary"]}
    (checkout / "config.yaml").write_text(yaml.safe_dump(config))
    target = "results/tiny_binary/train/n6/fold0/predictions.csv"

    def run(folder: Path, *args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "snakemake", "--configfile", "config.yaml", *args]
        return subprocess.run(command, cwd=folder, env=ENV, capture_output=True, text=True)

    first = run(checkout, "--cores", "1", target)
    assert first.returncode == 0, first.stderr[-3000:]
    moved = checkout.rename(tmp_path / "moved")
    dry = run(moved, "-n", target)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]
