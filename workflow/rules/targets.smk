# What the run makes: the experiments by task, the files of each evaluation, explanation and
# comparison, the folders of the trained networks, and the jobs of the training engines that
# train several networks in one job. `rule all` asks for all_targets().

COMPARISONS = {entry["name"]: entry for entry in CONFIG["compare"]}
ENSEMBLES = {name: entry for name, entry in COMPARISONS.items() if entry["ensemble"]}
BINARY = [e for e in CONFIG["run"] if is_binary(e)]
MULTICLASS = [e for e in CONFIG["run"] if not is_binary(e)]
MERGED = [e for e in CONFIG["run"] if CONFIG["experiments"][e]["evaluate"]["merged"]]
# Experiments whose training sets a selection strategy other than random chose, and those
# chosen by active learning (rounds: rule select_round).
SELECTED = [e for e in CONFIG["experiments"] if selection_of(e) != "random"]
UNCERTAIN = [e for e in CONFIG["experiments"] if selection_of(e) == "uncertain"]
# The folds job of a diverse experiment also writes folds/selection.csv (rule folds_diverse).
DIVERSE = [e for e in CONFIG["experiments"] if selection_of(e) == "diverse"]
NOT_DIVERSE = [e for e in CONFIG["experiments"] if selection_of(e) != "diverse"]
# Comparisons of selection strategies (their experiments' folds.selection differ, one is
# random): name -> the first random experiment, whose plateau the others are measured by.
STRATEGY_COMPARISONS = {
    name: next(e for e in entry["experiments"] if selection_of(e) == "random")
    for name, entry in COMPARISONS.items()
    if len({selection_of(e) for e in entry["experiments"]}) > 1
    and any(selection_of(e) == "random" for e in entry["experiments"])
}
STRATEGY_FILES = ("strategies.csv", "strategies.png")
COMPARISON_FILES = ("comparison.csv", "wilcoxon.csv", "comparison.md", "comparison.png")
ENSEMBLE_FILES = (
    "ensemble_predictions.csv",
    "ensemble_metrics.csv",
    "ensemble_summary.csv",
    "ensemble_wilcoxon.csv",
    "ensemble.md",
    "ensemble.png",
)
PREDICT_FILES = (
    "predictions.csv",
    "contact_sheet.png",
    "external_metrics.csv",
    "external.md",
    "external_confusion.png",
)
MERGED_FILES = (
    "merged_metrics.csv",
    "merged_summary.csv",
    "merged_roc.csv",
    "merged.md",
    "merged_roc.png",
)


# train.engine: per_fold experiments train in rule train, one job per (size, fold); the
# others in one rule each, whose jobs train many networks (every fold of one size, or with
# stacked_sweep of every size) by this fewcells command.
MULTI_NETWORK_COMMANDS = {
    "sequential": "train-folds",
    "stacked": "train-stacked --engine stacked",
    "stacked_sweep": "train-stacked --engine stacked_sweep",
}


# The experiments trained fold by fold (rule train).
PER_FOLD_EXPERIMENTS = [
    e for e in CONFIG["experiments"] if train_engine(e) == "per_fold"
]


def replicate_groups(experiment):
    """EXPERIMENT's training sizes grouped by their number of replicates: {replicates: sizes}."""
    cfg = CONFIG["experiments"][experiment]
    groups = {}
    for size in sorted(cfg["folds"]["sizes"]):
        groups.setdefault(replicates_at(cfg, size), []).append(size)
    return groups


# (experiment, replicates, sizes) of each rule whose jobs train many networks.
MULTI_NETWORK_JOBS = [
    (experiment, replicates, sizes)
    for experiment in CONFIG["experiments"]
    if train_engine(experiment) in MULTI_NETWORK_COMMANDS
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


def multi_network_rule_name(experiment, replicates):
    """train_<engine>_<experiment>, with _r<replicates> for the sizes that have replicates."""
    name = f"train_{train_engine(experiment)}_{experiment}"
    return name if len(replicate_groups(experiment)) == 1 else f"{name}_r{replicates}"


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
        if experiment in SELECTED:
            targets.append(f"{RESULTS}/{experiment}/selection/class_mix.csv")
    for name in COMPARISONS:
        targets += [f"{RESULTS}/comparisons/{name}/{file}" for file in COMPARISON_FILES]
    for name in ENSEMBLES:
        targets += [f"{RESULTS}/comparisons/{name}/{file}" for file in ENSEMBLE_FILES]
    for name in STRATEGY_COMPARISONS:
        targets += [f"{RESULTS}/comparisons/{name}/{file}" for file in STRATEGY_FILES]
    for experiment in CONFIG["run"]:
        if CONFIG["experiments"][experiment]["folds"]["set_aside"]:
            targets.append(f"{RESULTS}/{experiment}/set_aside/set_aside.csv")
    for entry in CONFIG["predict"]:
        targets += [
            f"{RESULTS}/{entry['experiment']}/predict/{entry['name']}/{file}"
            for file in PREDICT_FILES
        ]
    return targets
