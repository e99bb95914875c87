import atexit
import json
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

from fewcells.config import (
    check_config_file,
    common_sizes_and_folds,
    compare_metric,
    experiment_task,
    explain_folds,
    explain_sizes,
    fold_ids,
    pretrain_protocol,
    replicates_at,
    parse_run_name,
    run_name,
    train_protocol,
    training_runs,
    training_model,
    tsne_fold,
    tsne_sizes,
    validate_config,
)
from fewcells.errors import FewcellsError
from fewcells.data.fetch import source_listing
from fewcells import runlock

try:
    for path in workflow.configfiles:
        check_config_file(path)
    CONFIG = validate_config(config)
except FewcellsError as error:
    raise WorkflowError(f"invalid configuration: {error}") from None

RESULTS = CONFIG["results"]
DATASETS = f"{RESULTS}/datasets"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
PRETRAINED = f"{RESULTS}/pretrained"
# Snakemake options that parse the workflow without running jobs: they take no run lock.
NO_RUN_OPTIONS = {
    "--lint",
    "--list-rules",
    "--list",
    "-l",
    "--list-target-rules",
    "--lt",
    "--summary",
    "-S",
    "--detailed-summary",
    "-D",
    "--dag",
    "--rulegraph",
    "--filegraph",
    "--d3dag",
    "--report",
    "--cleanup-metadata",
    "--cm",
    "--list-changes",
    "--lc",
    "--list-input-changes",
    "--li",
    "--list-params-changes",
    "--lp",
    "--list-code-changes",
    "--list-untracked",
    "--lu",
    "--print-compilation",
    "--containerize",
    "--archive",
    "--export-cwl",
    "--generate-unit-tests",
    "--delete-all-output",
    "--delete-temp-output",
    "--conda-create-envs-only",
    "--touch",
    "-t",
    "--unlock",
    "--version",
    "-v",
    "--help",
    "-h",
}


def lock_results():
    """A real run (main process, not -n and none of NO_RUN_OPTIONS) takes RESULTS' run lock
    until it exits and removes what killed runs left half-written; `--unlock` clears a lock
    whose run is gone. See fewcells.runlock."""
    if not workflow.is_main_process:
        return  # a job on a cluster node: the submitting run holds the lock
    options = {arg.split("=", 1)[0] for arg in sys.argv[1:]}
    try:
        if "--unlock" in options:
            try:
                owner = runlock.unlock(RESULTS, force=False)
            except FewcellsError as error:
                logger.warning(str(error))
                return
            if owner:
                logger.info(f"removed the run lock of {runlock.describe(owner)}")
            return
        if workflow.output_settings.dryrun or options & NO_RUN_OPTIONS:
            return
        runlock.acquire(RESULTS, warn=logger.warning)
        atexit.register(runlock.release, RESULTS)
        for path in runlock.remove_stale_temporaries_under(RESULTS):
            logger.warning(f"removed {path}, left half-written by a killed run")
    except FewcellsError as error:
        raise WorkflowError(str(error)) from None


lock_results()
PACKAGE = Path(workflow.basedir) / "workflow" / "fewcells"


def package_files(*folders):
    """The Python and C++ sources under these folders of the fewcells package."""
    return sorted(
        str(path)
        for folder in folders
        for path in (PACKAGE / folder).rglob("*")
        if path.suffix in (".py", ".cpp", ".h") and "__pycache__" not in path.parts
    )


# Code whose edits change what a training writes, so that editing it reruns the trainings:
# the training package and the file contracts (the columns of history.csv and
# predictions.csv, what a collapsed network is). Pretraining also reads data/folds.py (the
# class mapping of its split); a training does not import pretrain.py.
PRETRAINING_CODE = package_files("training") + [
    str(PACKAGE / "contracts.py"),
    str(PACKAGE / "data" / "folds.py"),  # the class mapping of the pretraining split
]
TRAINING_CODE = [
    path
    for path in PRETRAINING_CODE
    if Path(path).name != "pretrain.py" and Path(path).parent.name != "data"
]


def is_binary(experiment):
    return experiment_task(CONFIG["experiments"][experiment]) == "binary"


COMPARISONS = {entry["name"]: entry for entry in CONFIG["compare"]}
ENSEMBLES = {name: entry for name, entry in COMPARISONS.items() if entry["ensemble"]}
BINARY = [e for e in CONFIG["run"] if is_binary(e)] or ["__none__"]
MULTICLASS = [e for e in CONFIG["run"] if not is_binary(e)] or ["__none__"]
MERGED = [
    e for e in CONFIG["run"] if CONFIG["experiments"][e]["evaluate"]["merged"]
] or ["__none__"]
ENSEMBLE_FILES = (
    "ensemble_predictions.csv",
    "ensemble_metrics.csv",
    "ensemble_summary.csv",
    "ensemble_wilcoxon.csv",
    "ensemble.md",
    "ensemble.png",
)
MERGED_FILES = (
    "merged_metrics.csv",
    "merged_summary.csv",
    "merged_roc.csv",
    "merged.md",
    "merged_roc.png",
)


wildcard_constraints:
    dataset=r"[A-Za-z0-9_-]+",
    experiment=r"[A-Za-z0-9_-]+",
    size=r"\d+",
    fold=r"\d+",
    run=r"fold\d+(_rep\d+)?",
    comparison=r"[A-Za-z0-9_-]+",


# train.engine: per_fold experiments train in rule train, one job per (size, fold); the
# others in one rule each, whose jobs train many networks (every fold of one size, or with
# stacked_sweep of every size) by this fewcells command.
MANY_TRAININGS_COMMANDS = {
    "sequential": "train-folds",
    "stacked": "train-stacked --engine stacked",
    "stacked_sweep": "train-stacked --engine stacked_sweep",
}


def train_engine(experiment):
    return CONFIG["experiments"][experiment]["train"]["engine"]


# Wildcard pattern: the experiments trained fold by fold (rule train), or none.
PER_FOLD_EXPERIMENTS = (
    "|".join(e for e in CONFIG["experiments"] if train_engine(e) == "per_fold")
    or "__none__"
)


def replicate_groups(experiment):
    """EXPERIMENT's training sizes grouped by their number of replicates: {replicates: sizes}."""
    cfg = CONFIG["experiments"][experiment]
    groups = {}
    for size in sorted(cfg["folds"]["sizes"]):
        groups.setdefault(replicates_at(cfg, size), []).append(size)
    return groups


# (experiment, replicates, sizes) of each rule whose jobs train many networks.
MANY_TRAININGS_JOBS = [
    (experiment, replicates, sizes)
    for experiment in CONFIG["experiments"]
    if train_engine(experiment) in MANY_TRAININGS_COMMANDS
    for replicates, sizes in replicate_groups(experiment).items()
]


def job_sizes(experiment):
    """The training sizes of one job of EXPERIMENT's training rule: the size wildcard, or
    (stacked_sweep) every size."""
    if train_engine(experiment) == "stacked_sweep":
        return sorted(CONFIG["experiments"][experiment]["folds"]["sizes"])
    return ["{size}"]


def job_name(experiment):
    """The log and benchmark file name of one job of EXPERIMENT's training rule."""
    engine = train_engine(experiment)
    return engine if engine == "stacked_sweep" else f"n{{size}}_{engine}"


def job_priority(experiment):
    """Per-size jobs: the largest sizes first, so that a sweep ends on short jobs."""
    if train_engine(experiment) == "stacked_sweep":
        return 0
    return lambda wildcards: int(wildcards.size)


def job_outputs(experiment, replicates=1):
    """The outputs of one job of EXPERIMENT's training rule that trains `replicates` networks
    per fold: each of its networks' files."""
    folds = fold_ids(CONFIG["experiments"][experiment])
    names = {
        "model": "model.ckpt",
        "history": "history.csv",
        "predictions": "predictions.csv",
        "embeddings": "embeddings.npz",
        "info": "train_info.json",
    }
    return {
        key: [
            f"{RESULTS}/{experiment}/train/n{size}/{run_name(fold, replicate)}/{name}"
            for size in job_sizes(experiment)
            for fold in folds
            for replicate in range(replicates)
        ]
        for key, name in names.items()
    }


def many_trainings_rule_name(experiment, replicates):
    """train_<engine>_<experiment>, with _r<replicates> for the sizes that have replicates."""
    name = f"train_{train_engine(experiment)}_{experiment}"
    return name if len(replicate_groups(experiment)) == 1 else f"{name}_r{replicates}"


def experiment_config(wildcards):
    return CONFIG["experiments"][wildcards.experiment]


def dataset_of(wildcards):
    return CONFIG["experiments"][wildcards.experiment]["dataset"]


def train_resource(wildcards, name, attempt):
    """A training job's `mem_mb` or `runtime` from the config, doubled on each retry."""
    value = CONFIG["experiments"][wildcards.experiment]["train"][name]
    return value * 2 ** (attempt - 1)


def job_resources(experiment, replicates=1):
    """The resources of one job of EXPERIMENT's training rule (memory and time doubled on
    each retry): train.runtime for each network a sequential job trains one after another,
    for each size a stacked_sweep job trains."""
    train = CONFIG["experiments"][experiment]["train"]
    runtime = train["runtime"]
    if train["engine"] == "sequential":
        runtime *= len(fold_ids(CONFIG["experiments"][experiment])) * replicates
    runtime *= len(job_sizes(experiment))
    resources = {
        "mem_mb": lambda wildcards, attempt: train["mem_mb"] * 2 ** (attempt - 1),
        "runtime": lambda wildcards, attempt: runtime * 2 ** (attempt - 1),
        "gpu": train["gpus"],
    }
    if train["gpus"] and train["gpu_model"]:
        resources["gpu_model"] = train["gpu_model"]
    return resources


def gpu_model(wildcards):
    """`train.gpu_model` for a training job that requests GPUs, else no such resource."""
    train = CONFIG["experiments"][wildcards.experiment]["train"]
    return train["gpu_model"] if train["gpus"] else None


def kept_csv(wildcards):
    return f"{DATASETS}/{dataset_of(wildcards)}/dedup/kept.csv"


def as_json(section):
    return json.dumps(section, sort_keys=True)


def experiment_model(experiment):
    """EXPERIMENT's model section, model.pretrained resolved to its checkpoint."""
    return training_model(CONFIG["experiments"][experiment], PRETRAINED)


def model_for_training(wildcards):
    return experiment_model(wildcards.experiment)


def train_dirs(experiment):
    """The folder of every network EXPERIMENT trains, replicates included."""
    cfg = CONFIG["experiments"][experiment]
    return [
        f"{RESULTS}/{experiment}/train/n{size}/{run}"
        for size in sorted(cfg["folds"]["sizes"])
        for run in training_runs(cfg, size)
    ]


def evaluation_targets(experiment):
    out = f"{RESULTS}/{experiment}/evaluation"
    figures = ["loss_curves.png", "learning_curve.png"]
    if is_binary(experiment):
        figures += ["roc_mean.png", "auc_boxplot.png"]
    else:
        figures += ["f1_boxplot.png", "confusion_matrix.png", "classwise_summary.csv"]
    if CONFIG["experiments"][experiment]["evaluate"]["merged"]:
        figures += [f"merged/{name}" for name in MERGED_FILES]
    return [f"{out}/{name}" for name in ["summary.md", "metrics.csv", *figures]]


def explanation_targets(experiment):
    cfg = CONFIG["experiments"][experiment]
    explain = [
        f"{RESULTS}/{experiment}/explain/fold{fold}/{name}"
        for fold in explain_folds(cfg)
        for name in (
            "relevance_maps.png",
            "relevance_summary.csv",
            "relevance_shares.png",
        )
    ]
    tsne = f"{RESULTS}/{experiment}/tsne/fold{tsne_fold(cfg)}"
    return explain + [f"{tsne}/{name}" for name in ("tsne.png", "separation.csv")]


def all_targets():
    targets = []
    for experiment in CONFIG["run"]:
        dataset = CONFIG["experiments"][experiment]["dataset"]
        targets.append(f"{DATASETS}/{dataset}/dedup/dedup_summary.json")
        targets += evaluation_targets(experiment)
        targets += explanation_targets(experiment)
    for name in COMPARISONS:
        targets += [
            f"{RESULTS}/comparisons/{name}/{file}"
            for file in (
                "comparison.csv",
                "wilcoxon.csv",
                "comparison.md",
                "comparison.png",
            )
        ]
    for name in ENSEMBLES:
        targets += [f"{RESULTS}/comparisons/{name}/{file}" for file in ENSEMBLE_FILES]
    return targets


def ensemble_inputs(wildcards):
    names = ENSEMBLES[wildcards.comparison]["experiments"]
    sizes, folds = common_sizes_and_folds(CONFIG, names)
    return {
        "classes": f"{RESULTS}/{names[0]}/folds/classes.json",
        "predictions": [
            f"{RESULTS}/{name}/train/n{size}/fold{fold}/predictions.csv"
            for name in names
            for size in sizes
            for fold in folds
        ],
    }


def ensemble_members(wildcards):
    """--member NAME FILE... per member (the (size, fold) jobs that all of them train)."""
    names = ENSEMBLES[wildcards.comparison]["experiments"]
    sizes, folds = common_sizes_and_folds(CONFIG, names)
    return " ".join(
        f"--member {name} "
        + " ".join(
            f"{RESULTS}/{name}/train/n{size}/fold{fold}/predictions.csv"
            for size in sizes
            for fold in folds
        )
        for name in names
    )


def merged_inputs(wildcards):
    dirs = train_dirs(wildcards.experiment)
    return {
        "classes": f"{RESULTS}/{wildcards.experiment}/folds/classes.json",
        "predictions": [f"{d}/predictions.csv" for d in dirs],
    }


def roc_sizes_option(wildcards):
    sizes = experiment_config(wildcards)["plots"]["roc_sizes"]
    return "--roc-sizes " + " ".join(map(str, sizes)) if sizes else ""


def compare_inputs(wildcards):
    return [
        f"{RESULTS}/{experiment}/evaluation/metrics.csv"
        for experiment in COMPARISONS[wildcards.comparison]["experiments"]
    ]


def comparison_output(name, label):
    return report(
        f"{RESULTS}/comparisons/{{comparison}}/{name}",
        caption="../report/comparison.rst",
        category="Comparisons",
        subcategory="{comparison}",
        labels={"comparison": "{comparison}", "figure": label},
    )


def ensemble_output(name, label):
    return report(
        f"{RESULTS}/comparisons/{{comparison}}/{name}",
        caption="../report/ensemble.rst",
        category="Comparisons",
        subcategory="{comparison}",
        labels={"comparison": "{comparison}", "figure": label},
    )


def merged_output(name, label):
    return report(
        f"{RESULTS}/{{experiment}}/evaluation/merged/{name}",
        caption="../report/merged.rst",
        category="{experiment}",
        subcategory="Merged classes",
        labels={"experiment": "{experiment}", "figure": label},
    )


def evaluate_inputs(wildcards):
    dirs = train_dirs(wildcards.experiment)
    return {
        "classes": f"{RESULTS}/{wildcards.experiment}/folds/classes.json",
        "predictions": [f"{d}/predictions.csv" for d in dirs],
        "history": [f"{d}/history.csv" for d in dirs],
        "info": [f"{d}/train_info.json" for d in dirs],
    }


EVALUATE_PARAMS = {
    "train_dirs": lambda w: train_dirs(w.experiment),
    "reference": lambda w: (
        f"--reference {experiment_config(w)['reference']}"
        if experiment_config(w)["reference"]
        else ""
    ),
    "plots": lambda w: as_json(experiment_config(w)["plots"]),
    "out": lambda w: f"{RESULTS}/{w.experiment}/evaluation",
}
EVALUATE_SHELL = (
    "fewcells evaluate {params.train_dirs} --classes {input.classes}"
    " --experiment {wildcards.experiment} {params.reference}"
    " --plot-options {params.plots:q} --out {params.out} 2> {log}"
)


def figure(name, caption, experiment_label):
    return report(
        f"{RESULTS}/{{experiment}}/evaluation/{name}",
        caption=f"../report/{caption}.rst",
        category="{experiment}",
        subcategory="Evaluation",
        labels={"experiment": "{experiment}", "figure": experiment_label},
    )


def explain_inputs(wildcards):
    experiment = experiment_config(wildcards)
    root = f"{RESULTS}/{wildcards.experiment}"
    return {
        "images": f"{root}/store/images.npy",
        "index": f"{root}/store/index.csv",
        "folds": f"{root}/folds/folds.csv",
        "classes": f"{root}/folds/classes.json",
        "models": [
            f"{root}/train/n{size}/fold{wildcards.fold}/model.ckpt"
            for size in explain_sizes(experiment)
        ],
    }


EXPLAIN_SETTINGS = (
    "cells",
    "composite",
    "share_composites",
    "epsilon",
    "gamma",
    "target",
)


def explain_settings(wildcards):
    explain = experiment_config(wildcards)["explain"]
    return as_json({key: explain[key] for key in EXPLAIN_SETTINGS})


def masks_option(wildcards):
    dataset = CONFIG["datasets"][dataset_of(wildcards)]
    if dataset["masks"]:
        return f"--masks {dataset['masks']}"
    if dataset["kind"] == "demo":
        return f"--masks {DATASETS}/{dataset_of(wildcards)}/files/masks"
    return ""


def explain_figure(name, caption, label):
    return report(
        f"{RESULTS}/{{experiment}}/explain/fold{{fold}}/{name}",
        caption=f"../report/{caption}.rst",
        category="{experiment}",
        subcategory="Explanations",
        labels={"experiment": "{experiment}", "fold": "{fold}", "figure": label},
    )


def tsne_figure(name, caption, label):
    return report(
        f"{RESULTS}/{{experiment}}/tsne/fold{{fold}}/{name}",
        caption=f"../report/{caption}.rst",
        category="{experiment}",
        subcategory="Explanations",
        labels={"experiment": "{experiment}", "fold": "{fold}", "figure": label},
    )
