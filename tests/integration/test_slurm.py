"""The SLURM profile on a real single-node SLURM cluster, against a local run.

`.ci/slurm-cluster.sh start` starts munged, MariaDB, slurmdbd, slurmctld and slurmd on
127.0.0.1 (configs in a temporary folder); the tiny demo runs through
`snakemake --workflow-profile profiles/slurm` (snakemake-executor-plugin-slurm: sbatch,
sacct), then with `--cores 2` in another folder. SLURM's accounting must list every job of a
non-local rule as completed, and the results must equal the local run's. The cluster is
stopped and its folder removed afterwards.

Skipped, with the reason, where SLURM is not installed (`.ci/slurm-cluster.sh install`,
which .ci/run calls) or cannot be started (not root and no passwordless sudo); with
FEWCELLS_SLURM_REQUIRED=1 these fail instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "integration" / "configs" / "tiny_demo.yaml"
CLUSTER_SCRIPT = REPO / ".ci" / "slurm-cluster.sh"
PROFILE = REPO / "profiles" / "slurm"
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
EXPERIMENTS = {"tiny_binary": ([6, 12], [0, 1]), "tiny_multiclass": ([10, 15], [0])}
CLUSTER_RULES = {"manifest", "dedup", "folds", "store", "train", "explain", "tsne"}
LOCAL_RULES = {"fetch", "evaluate_binary", "evaluate_multiclass", "all"}

pytestmark = pytest.mark.slow


def cannot_run(reason: str):
    if os.environ.get("FEWCELLS_SLURM_REQUIRED") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def read_env(path: Path) -> dict[str, str]:
    """The `export NAME=VALUE` lines that `slurm-cluster.sh start` writes."""
    pairs = (line.removeprefix("export ").split("=", 1) for line in path.read_text().split("\n"))
    return {pair[0]: pair[1] for pair in pairs if len(pair) == 2}


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory) -> dict[str, str]:
    """Start a private SLURM cluster; yield the environment that reaches it; stop it."""
    if shutil.which("sbatch") is None or shutil.which("slurmctld", path="/usr/sbin") is None:
        cannot_run("SLURM is not installed (`.ci/slurm-cluster.sh install` installs it)")
    if os.geteuid() != 0 and shutil.which("sudo") is None:
        cannot_run("starting SLURM daemons needs root or sudo")
    # A new folder directly in /tmp (sticky), made by the script as root: munged checks
    # that no other user can write to the folders above its key and socket.
    cluster = Path(tempfile.gettempdir()) / f"fewcells-slurm-{uuid.uuid4().hex[:8]}"
    log = tmp_path_factory.mktemp("slurm-cluster") / "cluster.log"
    try:
        with log.open("w") as out:
            started = subprocess.run(
                ["bash", str(CLUSTER_SCRIPT), "start", str(cluster)],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=300,
            )
        if started.returncode != 0:
            cannot_run(f"could not start a SLURM cluster: {log.read_text()[-1500:]}")
        yield {**ENV, **read_env(cluster / "env")}
    finally:
        with log.open("a") as out:
            subprocess.run(
                ["bash", str(CLUSTER_SCRIPT), "stop", str(cluster)],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=300,
            )


def snakemake(workdir: Path, env: dict[str, str], *args: str) -> str:
    command = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), *args]
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"snakemake failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}")
    return result.stdout + result.stderr


def accounting(env: dict[str, str], run_id: str) -> pd.DataFrame:
    """SLURM's accounting (slurmdbd) of the jobs of one Snakemake run (job name = run id)."""
    fields = ["JobIDRaw", "State", "ExitCode", "Account", "Partition", "AllocCPUS", "Comment"]
    output = subprocess.run(
        ["sacct", "-X", "--parsable2", "--noheader", "--starttime", "2000-01-01"]
        + ["--name", run_id, "--format", ",".join(f"{field}%200" for field in fields)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("|") for line in output.strip().split("\n") if line]
    return pd.DataFrame(rows, columns=fields)


def result_tables(workdir: Path) -> dict[str, Path]:
    """Every CSV, JSON and Markdown result except the per-run timings of train_info.json."""
    results = workdir / "results"
    return {
        str(path.relative_to(results)): path
        for experiment in EXPERIMENTS
        for path in (results / experiment).rglob("*")
        if path.suffix in (".csv", ".json", ".md") and path.name != "train_info.json"
    }


def test_demo_runs_through_slurm_with_the_results_of_a_local_run(slurm_env, tmp_path_factory):
    on_slurm, local = tmp_path_factory.mktemp("on_slurm"), tmp_path_factory.mktemp("local")
    for workdir in (on_slurm, local):
        shutil.copy(TINY, workdir / "config.yaml")

    log = snakemake(
        on_slurm,
        slurm_env,
        "--workflow-profile",
        str(PROFILE),
        "--configfile",
        "config.yaml",
        # the profile's 40 s suit a real cluster; this one answers at once
        "--slurm-init-seconds-before-status-checks",
        "2",
    )
    snakemake(local, ENV, "--cores", "2", "--configfile", "config.yaml")

    # Every job of a cluster rule went through SLURM and completed; local rules did not.
    run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
    jobs = accounting(slurm_env, run_id)
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", log)
    assert sorted(jobs.JobIDRaw) == sorted(submitted)
    assert (jobs.State == "COMPLETED").all() and (jobs.ExitCode == "0:0").all(), jobs
    assert (jobs.Account == slurm_env["SLURM_ACCOUNT"]).all()
    assert (jobs.Partition == slurm_env["SLURM_PARTITION"]).all()
    rules = jobs.Comment.str.extract(r"^rule_([a-z_]+?)(?:_wildcards_|$)")[0]
    assert set(rules) == CLUSTER_RULES and not LOCAL_RULES & set(rules)
    assert sorted(jobs.Comment[rules == "train"]) == sorted(
        f"rule_train_wildcards_{experiment}_{size}_fold{fold}"
        for experiment, (sizes, folds) in EXPERIMENTS.items()
        for size in sizes
        for fold in folds
    )
    dedup = "results/datasets/tiny/dedup/dedup_summary.json"
    assert json.loads((on_slurm / dedup).read_text()) == json.loads((local / dedup).read_text())

    # The same results as the local run: trainings are deterministic for a seed.
    tables = result_tables(on_slurm)
    assert tables.keys() == result_tables(local).keys()
    assert any(name.endswith("predictions.csv") for name in tables)
    for name, path in tables.items():
        if path.suffix == ".csv":
            pd.testing.assert_frame_equal(
                pd.read_csv(path), pd.read_csv(local / "results" / name), obj=name
            )
        else:
            assert path.read_text() == (local / "results" / name).read_text(), name


def test_profile_requests_gpus_only_for_experiments_that_train_on_them(tmp_path):
    """A dry run with the profile: no cluster needed, only the executor plugin."""
    pytest.importorskip("snakemake_executor_plugin_slurm")
    config = yaml.safe_load(TINY.read_text())
    config["experiments"]["tiny_binary"]["train"].update(gpus=1, gpu_model="a100")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**ENV, "SLURM_ACCOUNT": "lab", "SLURM_GPU_PARTITION": "gpu", "SLURM_CPUS_PER_GPU": "4"}
    for name in ("SLURM_PARTITION", "SLURM_CONF"):
        env.pop(name, None)
    output = snakemake(
        tmp_path, env, "-n", "--workflow-profile", str(PROFILE), "--configfile", "config.yaml"
    )
    resources = {}
    for block in re.split(r"\n\s*\n", output):
        rule = re.search(r"^rule (\w+):", block, re.MULTILINE)
        listed = re.search(r"resources: (.*)", block)
        if rule and listed:
            experiment = re.search(r"experiment=(\w+)", block)
            key = (rule.group(1), experiment.group(1) if experiment else None)
            resources[key] = dict(item.split("=", 1) for item in listed.group(1).split(", "))
    gpu, cpu = resources[("train", "tiny_binary")], resources[("train", "tiny_multiclass")]
    assert (gpu["gpu"], gpu["gpu_model"], gpu["cpus_per_gpu"]) == ("1", "a100", "4")
    assert gpu["slurm_partition"] == cpu["slurm_partition"] == "gpu"
    assert cpu["gpu"] == "0" and "gpu_model" not in cpu
    dedup = resources[("dedup", None)]
    assert dedup["slurm_account"] == "lab" and "slurm_partition" not in dedup
