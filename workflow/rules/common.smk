import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from fewcells.config import (
    compare_metric,
    experiment_task,
    explain_folds,
    explain_sizes,
    fold_ids,
    train_protocol,
    tsne_fold,
    tsne_sizes,
    validate_config,
)
from fewcells.errors import FewcellsError

try:
    CONFIG = validate_config(config)
except FewcellsError as error:
    raise WorkflowError(f"invalid configuration: {error}") from None

RESULTS = CONFIG["results"]
DATASETS = f"{RESULTS}/datasets"
LOGS = f"{RESULTS}/logs"
BENCHMARKS = f"{RESULTS}/benchmarks"
PACKAGE = Path(workflow.basedir) / "workflow" / "fewcells"
TRAINING_CODE = [str(PACKAGE / name) for name in ("model.py", "augment.py", "train.py")]


def is_binary(experiment):
    return experiment_task(CONFIG["experiments"][experiment]) == "binary"


COMPARISONS = {entry["name"]: entry for entry in CONFIG["compare"]}
BINARY = [e for e in CONFIG["run"] if is_binary(e)] or ["__none__"]
MULTICLASS = [e for e in CONFIG["run"] if not is_binary(e)] or ["__none__"]


wildcard_constraints:
    dataset=r"[A-Za-z0-9_-]+",
    experiment=r"[A-Za-z0-9_-]+",
    size=r"\d+",
    fold=r"\d+",
    comparison=r"[A-Za-z0-9_-]+",


def experiment_config(wildcards):
    return CONFIG["experiments"][wildcards.experiment]


def dataset_of(wildcards):
    return CONFIG["experiments"][wildcards.experiment]["dataset"]


def train_resource(wildcards, name, attempt):
    """A training job's `mem_mb` or `runtime` from the config, doubled on each retry."""
    value = CONFIG["experiments"][wildcards.experiment]["train"][name]
    return value * 2 ** (attempt - 1)


def gpu_model(wildcards):
    """`train.gpu_model` for a training job that requests GPUs, else no such resource."""
    train = CONFIG["experiments"][wildcards.experiment]["train"]
    return train["gpu_model"] if train["gpus"] else None


def kept_csv(wildcards):
    return f"{DATASETS}/{dataset_of(wildcards)}/dedup/kept.csv"


def as_json(section):
    return json.dumps(section, sort_keys=True)


def train_dirs(experiment):
    cfg = CONFIG["experiments"][experiment]
    return [
        f"{RESULTS}/{experiment}/train/n{size}/fold{fold}"
        for size in sorted(cfg["folds"]["sizes"])
        for fold in fold_ids(cfg)
    ]


def evaluation_targets(experiment):
    out = f"{RESULTS}/{experiment}/evaluation"
    figures = ["loss_curves.png", "learning_curve.png"]
    if is_binary(experiment):
        figures += ["roc_mean.png", "auc_boxplot.png"]
    else:
        figures += ["f1_boxplot.png", "confusion_matrix.png"]
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
    return targets


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


def evaluate_inputs(wildcards):
    dirs = train_dirs(wildcards.experiment)
    return {
        "classes": f"{RESULTS}/{wildcards.experiment}/folds/classes.json",
        "predictions": [f"{d}/predictions.csv" for d in dirs],
        "history": [f"{d}/history.csv" for d in dirs],
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
