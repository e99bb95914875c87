# What the rules read, and their params and resources as the config decides them: the
# input functions (of the wildcards) and the params that several rules share.


def kept_csv(wildcards):
    return f"{DATASETS}/{dataset_of(wildcards)}/dedup/kept.csv"


def folds_inputs(wildcards):
    """kept.csv; a diverse selection also reads the stored images (its features) and, with
    network features, the named experiment's network of each fold it trains."""
    inputs = {"kept": kept_csv(wildcards)}
    if selection_of(wildcards.experiment) == "diverse":
        store = f"{RESULTS}/{wildcards.experiment}/store"
        inputs |= {"images": f"{store}/images.npy", "index": f"{store}/index.csv"}
        inputs["networks"] = features_networks(wildcards.experiment)
    return inputs


def features_networks(experiment):
    """The model.ckpt of each fold of folds.selection.features {experiment, size} (replicate
    0, the folds EXPERIMENT trains), or of the pretraining {pretrained}; none for the
    colour/texture statistics."""
    cfg = CONFIG["experiments"][experiment]
    features = cfg["folds"]["selection"]["features"]
    if features == "stats":
        return []
    if "pretrained" in features:
        return [f"{PRETRAINED}/{features['pretrained']}/model.ckpt"]
    root = f"{RESULTS}/{features['experiment']}/train/n{features['size']}"
    return [f"{root}/fold{fold}/model.ckpt" for fold in fold_ids(cfg)]


def selection_spec(experiment):
    """EXPERIMENT's folds.selection for a job's --spec, without the default features stats
    (so that results from before the key existed stay current)."""
    selection = CONFIG["experiments"][experiment]["folds"]["selection"]
    return {
        k: v for k, v in selection.items() if not (k == "features" and v == "stats")
    }


def folds_spec(wildcards):
    """The folds job's --spec: the folds section without sizes and run_folds (and without the
    defaults set_aside null and selection random, so that older results stay current).
    """
    folds = experiment_config(wildcards)["folds"]
    spec = {
        k: v
        for k, v in folds.items()
        if k not in ("sizes", "run_folds")
        and not (k == "set_aside" and v is None)
        and not (k == "selection" and v["strategy"] == "random")
    }
    if "selection" in spec:
        spec["selection"] = selection_spec(wildcards.experiment)
    return as_json(spec | {"classes": experiment_config(wildcards).get("classes")})


def training_folds(wildcards):
    """The folder whose folds.csv and classes.json a training reads: the experiment's folds,
    or (selection uncertain) its fold's round of that size."""
    if selection_of(wildcards.experiment) != "uncertain":
        return f"{RESULTS}/{wildcards.experiment}/folds"
    fold = parse_run_name(wildcards.run)[0]
    return f"{RESULTS}/{wildcards.experiment}/selection/fold{fold}/n{wildcards.size}"


def round_of(wildcards):
    """(round, previous size or None) of an uncertain experiment's size wildcard."""
    sizes = sorted(experiment_config(wildcards)["folds"]["sizes"])
    size = int(wildcards.size)
    if size not in sizes:
        raise WorkflowError(
            f"{wildcards.experiment}: {size} is not one of folds.sizes {sizes}"
        )
    position = sizes.index(size)
    return position, sizes[position - 1] if position else None


def select_round_inputs(wildcards):
    """Round 0: the experiment's folds; round r: round r - 1 and the network trained on it."""
    root = f"{RESULTS}/{wildcards.experiment}"
    inputs = {
        "folds": f"{root}/folds/folds.csv",
        "classes": f"{root}/folds/classes.json",
    }
    position, previous = round_of(wildcards)
    if position:
        inputs["previous"] = (
            f"{root}/selection/fold{wildcards.fold}/n{previous}/folds.csv"
        )
        inputs["network"] = f"{root}/train/n{previous}/fold{wildcards.fold}/model.ckpt"
        inputs["images"] = f"{root}/store/images.npy"
    return inputs


def select_round_arguments(wildcards):
    """--round, and for a later round --previous, --previous-size and --network."""
    root = f"{RESULTS}/{wildcards.experiment}"
    position, previous = round_of(wildcards)
    if not position:
        return "--round 0"
    return (
        f"--round {position} --previous-size {previous}"
        f" --previous {root}/selection/fold{wildcards.fold}/n{previous}"
        f" --network {root}/train/n{previous}/fold{wildcards.fold}"
    )


def selection_summary_picks(wildcards):
    """The diverse order's picks (written by rule folds_diverse); none for uncertain."""
    if selection_of(wildcards.experiment) != "diverse":
        return []
    return f"{RESULTS}/{wildcards.experiment}/folds/selection.csv"


def selection_summary_rounds(wildcards):
    """The round folders (selection.csv) of an uncertain experiment; none for diverse."""
    experiment = wildcards.experiment
    if selection_of(experiment) != "uncertain":
        return []
    cfg = CONFIG["experiments"][experiment]
    return [
        f"{RESULTS}/{experiment}/selection/fold{fold}/n{size}/selection.csv"
        for fold in fold_ids(cfg)
        for size in cfg["folds"]["sizes"]
    ]


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


def predict_listing(wildcards):
    """The file listing of a predict entry's folder (reruns it when files change); none for
    a set-aside folder of this run, whose set_aside.csv is an input."""
    entry = predict_entry(wildcards)
    if set_aside_dependency(CONFIG, entry):
        return ""
    cache = f"{RESULTS}/{wildcards.experiment}/predict/{wildcards.name}/listing.json"
    return source_listing(entry["images"], cache=cache)
