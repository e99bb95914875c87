"""What a validated config asks to run: the folds, sizes and replicates of each experiment,
the folder of each trained network, the config each training job gets, and the sizes and
folds that the explanations and comparisons use. Snakemake's rules compute their targets
with these functions (the config itself is checked by fewcells.config)."""

from __future__ import annotations

from fewcells.contracts import MAIN_METRIC, task_of

# train keys for the scheduler (resources of a training job), not for the training code.
TRAIN_RESOURCE_KEYS = ("mem_mb", "runtime", "gpus", "gpu_model")
# train keys that say how many networks are trained, not how one is trained.
TRAIN_PLAN_KEYS = ("replicates", "replicate_sizes")
# Keys of an experiment's `pretrain` section that replace its `train` keys when pretraining.
PRETRAIN_TRAIN_KEYS = ("optimizer", "lr", "batch_size", "max_epochs", "patience", "seed", "threads")


def experiment_task(experiment: dict) -> str:
    """binary (exactly two classes configured) or multiclass."""
    classes = experiment.get("classes")
    return "multiclass" if classes is None else task_of(classes)


def compare_metric(config: dict, entry: dict) -> str:
    """The metric of a validated `compare` entry (null - the task's main metric)."""
    if entry.get("metric"):
        return entry["metric"]
    task = experiment_task(config["experiments"][entry["experiments"][0]])
    return MAIN_METRIC[task]


def common_sizes_and_folds(config: dict, names: list[str]) -> tuple[list[int], list[int]]:
    """Training sizes and folds that every one of the experiments trains."""
    experiments = [config["experiments"][name] for name in names]
    sizes = set.intersection(*(set(e["folds"]["sizes"]) for e in experiments))
    folds = set.intersection(*(set(fold_ids(e)) for e in experiments))
    return sorted(sizes), sorted(folds)


def train_job_config(experiment: dict) -> dict:
    """What a training job gets as --train-config: the `train` section without the scheduler
    resources and the replicate plan; `finetune` only where it is set."""
    return {
        k: v
        for k, v in experiment["train"].items()
        if k not in TRAIN_RESOURCE_KEYS + TRAIN_PLAN_KEYS and not (k == "finetune" and v is None)
    }


def pretrain_job_config(experiment: dict) -> dict:
    """What the pretraining job of a source experiment gets as --train-config: its training
    jobs' config without finetune, with the `pretrain` section's optimizer, lr, batch size,
    epochs, patience, seed and threads."""
    protocol = {k: v for k, v in train_job_config(experiment).items() if k != "finetune"}
    return protocol | {k: experiment["pretrain"][k] for k in PRETRAIN_TRAIN_KEYS}


def model_job_config(experiment: dict, pretrained_root: str) -> dict:
    """What a training job gets as --model-config: the `model` section, model.pretrained
    turned into model.weights = PRETRAINED_ROOT/<source>/model.ckpt (and the key dropped)."""
    model = {k: v for k, v in experiment["model"].items() if k != "pretrained"}
    source = experiment["model"].get("pretrained")
    if source is not None:
        model["weights"] = f"{pretrained_root}/{source}/model.ckpt"
    return model


def fold_ids(experiment: dict) -> list[int]:
    """Folds to train: `folds.run_folds` or all k."""
    folds = experiment["folds"]
    return list(folds["run_folds"]) if folds["run_folds"] else list(range(folds["k"]))


# The folds keys that do not change the split (test, validation and pool images).
FOLD_KEYS_THAT_MAY_DIFFER = ("sizes", "run_folds", "selection")


def fold_split(experiment: dict) -> dict:
    """The folds keys that decide the split: all but sizes, run_folds and selection."""
    return {k: v for k, v in experiment["folds"].items() if k not in FOLD_KEYS_THAT_MAY_DIFFER}


def replicates_at(experiment: dict, size: int) -> int:
    """Networks trained per fold at training size `size`: train.replicates where
    train.replicate_sizes includes it (null: every size), else 1."""
    train = experiment["train"]
    chosen = train["replicate_sizes"]
    return train["replicates"] if chosen is None or size in chosen else 1


def run_name(fold: int, replicate: int = 0) -> str:
    """The folder of one trained network under train/n<size>/: fold<k>, and fold<k>_rep<r>
    for the replicates r >= 1 (other seeds on the same fold)."""
    return f"fold{fold}" if replicate == 0 else f"fold{fold}_rep{replicate}"


def parse_run_name(run: str) -> tuple[int, int]:
    """(fold, replicate) of a run folder name; the inverse of run_name."""
    fold, _, replicate = run.removeprefix("fold").partition("_rep")
    return int(fold), int(replicate or 0)


def training_runs(experiment: dict, size: int) -> list[str]:
    """The run folders (see run_name) of every network trained at `size`."""
    return [
        run_name(fold, replicate)
        for fold in fold_ids(experiment)
        for replicate in range(replicates_at(experiment, size))
    ]


def explain_sizes(experiment: dict) -> list[int]:
    """Sizes explained: `explain.sizes`, or up to four spread over `folds.sizes`."""
    from fewcells.analysis.plots import spread_sizes

    return sorted(experiment["explain"]["sizes"] or spread_sizes(experiment["folds"]["sizes"], 4))


def explain_folds(experiment: dict) -> list[int]:
    """Folds explained: `explain.folds`, or the first trained fold."""
    return list(experiment["explain"]["folds"] or fold_ids(experiment)[:1])


def tsne_sizes(experiment: dict) -> list[int]:
    """Sizes in the tSNE figure: `tsne.sizes`, or up to three spread over `folds.sizes`."""
    from fewcells.analysis.plots import spread_sizes

    return sorted(experiment["tsne"]["sizes"] or spread_sizes(experiment["folds"]["sizes"], 3))


def tsne_fold(experiment: dict) -> int:
    """Fold of the tSNE figure: `tsne.fold`, or the first trained fold."""
    fold = experiment["tsne"]["fold"]
    return fold_ids(experiment)[0] if fold is None else fold
