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
        classwise=figure(
            "classwise_summary.csv",
            "classwise",
            "class-wise precision and sensitivity",
        ),
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


rule evaluate_merged:
    input:
        unpack(merged_inputs),
    output:
        metrics=merged_output("merged_metrics.csv", "merged classes per fold"),
        table=merged_output("merged_summary.csv", "merged classes table"),
        roc_table=merged_output("merged_roc.csv", "merged classes mean ROC table"),
        summary=merged_output("merged.md", "merged classes summary"),
        roc=merged_output("merged_roc.png", "merged classes mean ROC"),
    log:
        f"{LOGS}/{{experiment}}/evaluate_merged.log",
    wildcard_constraints:
        experiment="|".join(MERGED),
    conda:
        "../../envs/fewcells.yaml"
    params:
        train_dirs=lambda w: train_dirs(w.experiment),
        groups=lambda w: json.dumps(experiment_config(w)["evaluate"]["merged"]),
        roc_sizes=roc_sizes_option,
        dpi=lambda w: experiment_config(w)["plots"]["dpi"],
        out=lambda w: f"{RESULTS}/{w.experiment}/evaluation/merged",
    shell:
        "fewcells merged {params.train_dirs} --classes {input.classes}"
        " --groups {params.groups:q} --experiment {wildcards.experiment}"
        " {params.roc_sizes} --dpi {params.dpi} --out {params.out} 2> {log}"
