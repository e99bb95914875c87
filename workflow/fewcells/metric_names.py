"""Names of the per-(size, fold) metrics in metrics.csv, by task (no heavy imports: the
config validation that Snakemake runs at start-up reads them too)."""

MAIN_METRIC = {"binary": "roc_auc", "multiclass": "macro_f1"}
BINARY_METRICS = [
    "roc_auc",
    "sensitivity",
    "specificity",
    "youden_threshold",
    "youden_sensitivity",
    "youden_specificity",
    "accuracy",
    "f1",
]
MULTICLASS_METRICS = ["macro_f1", "accuracy", "balanced_accuracy"]
# Scores that experiments can be compared by (the Youden threshold is a cut-off, not a score).
SCORES = {
    "binary": tuple(m for m in BINARY_METRICS if m != "youden_threshold"),
    "multiclass": tuple(MULTICLASS_METRICS),
}
