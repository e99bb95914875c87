rule evaluate_binary:
    input:
        unpack(evaluate_inputs),
    output:
        summary=figure("summary.md", "summary", "summary table"),
        metrics=f"{RESULTS}/{{experiment}}/evaluation/metrics.csv",
        loss=figure("loss_curves.png", "loss_curves", "loss curves"),
        curve=figure("learning_curve.png", "learning_curve", "learning curve"),
        roc=figure("roc_mean.png", "roc_mean", "mean ROC"),
        boxplot=figure("auc_boxplot.png", "auc_boxplot", "ROC-AUC vs size"),
    log:
        f"{LOGS}/{{experiment}}/evaluate.log",
    wildcard_constraints:
        experiment="|".join(BINARY),
    localrule: True
    conda:
        "../../envs/fewcells.yaml"
    params:
        **EVALUATE_PARAMS,
    shell:
        EVALUATE_SHELL


rule evaluate_multiclass:
    input:
        unpack(evaluate_inputs),
    output:
        summary=figure("summary.md", "summary", "summary table"),
        metrics=f"{RESULTS}/{{experiment}}/evaluation/metrics.csv",
        loss=figure("loss_curves.png", "loss_curves", "loss curves"),
        curve=figure("learning_curve.png", "learning_curve", "learning curve"),
        boxplot=figure("f1_boxplot.png", "f1_boxplot", "macro F1 vs size"),
        confusion=figure("confusion_matrix.png", "confusion_matrix", "confusion matrix"),
    log:
        f"{LOGS}/{{experiment}}/evaluate.log",
    wildcard_constraints:
        experiment="|".join(MULTICLASS),
    localrule: True
    conda:
        "../../envs/fewcells.yaml"
    params:
        **EVALUATE_PARAMS,
    shell:
        EVALUATE_SHELL
