rule evaluate_binary:
    input:
        unpack(evaluate_inputs),
    output:
        summary=report_output("evaluation", "summary.md", figure="summary table"),
        metrics=f"{RESULTS}/{{experiment}}/evaluation/metrics.csv",
        loss=report_output("evaluation", "loss_curves.png", figure="loss curves"),
        curve=report_output("evaluation", "learning_curve.png", figure="learning curve"),
        roc=report_output("evaluation", "roc_mean.png", figure="mean ROC"),
        boxplot=report_output("evaluation", "auc_boxplot.png", figure="ROC-AUC vs size"),
    log:
        f"{LOGS}/{{experiment}}/evaluate.log",
    wildcard_constraints:
        experiment=one_of(BINARY),
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
        summary=report_output("evaluation", "summary.md", figure="summary table"),
        metrics=f"{RESULTS}/{{experiment}}/evaluation/metrics.csv",
        loss=report_output("evaluation", "loss_curves.png", figure="loss curves"),
        curve=report_output("evaluation", "learning_curve.png", figure="learning curve"),
        boxplot=report_output("evaluation", "f1_boxplot.png", figure="macro F1 vs size"),
        confusion=report_output(
            "evaluation", "confusion_matrix.png", figure="confusion matrix"
        ),
        classwise=report_output(
            "evaluation",
            "classwise_summary.csv",
            caption="classwise",
            figure="class-wise precision and sensitivity",
        ),
    log:
        f"{LOGS}/{{experiment}}/evaluate.log",
    wildcard_constraints:
        experiment=one_of(MULTICLASS),
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
        metrics=report_output(
            "merged", "merged_metrics.csv", figure="merged classes per fold"
        ),
        table=report_output(
            "merged", "merged_summary.csv", figure="merged classes table"
        ),
        roc_table=report_output(
            "merged", "merged_roc.csv", figure="merged classes mean ROC table"
        ),
        summary=report_output("merged", "merged.md", figure="merged classes summary"),
        roc=report_output("merged", "merged_roc.png", figure="merged classes mean ROC"),
    log:
        f"{LOGS}/{{experiment}}/evaluate_merged.log",
    wildcard_constraints:
        experiment=one_of(MERGED),
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
