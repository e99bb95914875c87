# What the rules read, and their params and resources as the config decides them: the
# input functions (of the wildcards) and the params that several rules share.


def kept_csv(wildcards):
    return f"{DATASETS}/{dataset_of(wildcards)}/dedup/kept.csv"


def job_priority(experiment):
    """Per-size jobs: the largest sizes first, so that a sweep ends on short jobs."""
    if train_engine(experiment) == "stacked_sweep":
        return 0
    return lambda wildcards: int(wildcards.size)


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


PREDICT_ENTRIES = {(e["experiment"], e["name"]): e for e in CONFIG["predict"]}


def predict_entry(wildcards):
    return PREDICT_ENTRIES[(wildcards.experiment, wildcards.name)]


def predict_inputs(wildcards):
    """The networks of a predict entry (and their test predictions, for the internal
    numbers and validation thresholds), the classes, and a set-aside table it reads."""
    entry = predict_entry(wildcards)
    dirs = entry_train_dirs(CONFIG, entry)
    return {
        "classes": f"{RESULTS}/{wildcards.experiment}/folds/classes.json",
        "models": [f"{d}/model.ckpt" for d in dirs],
        "predictions": [f"{d}/predictions.csv" for d in dirs],
        "set_aside": set_aside_dependency(CONFIG, entry),
    }


def predict_listing(entry):
    """The file listing of a predict entry's folder (reruns it when files change); none for
    a set-aside folder of this run, whose set_aside.csv is an input."""
    if set_aside_dependency(CONFIG, entry):
        return ""
    return source_listing(entry["images"])
