rule compare:
    input:
        metrics=compare_inputs,
    output:
        table=report_output("comparison", "comparison.csv", figure="comparison table"),
        tests=report_output("comparison", "wilcoxon.csv", figure="Wilcoxon tests"),
        summary=report_output("comparison", "comparison.md", figure="summary"),
        figure=report_output("comparison", "comparison.png", figure="metric vs size"),
    log:
        f"{LOGS}/comparisons/{{comparison}}.log",
    localrule: True
    conda:
        "../../envs/fewcells.yaml"
    params:
        names=lambda w: COMPARISONS[w.comparison]["experiments"],
        metric=lambda w: compare_metric(CONFIG, COMPARISONS[w.comparison]),
        dpi=lambda w: CONFIG["experiments"][
            COMPARISONS[w.comparison]["experiments"][0]
        ]["plots"]["dpi"],
        out=lambda w: f"{RESULTS}/comparisons/{w.comparison}",
    shell:
        "fewcells compare {input.metrics} --names {params.names} --metric {params.metric}"
        " --title {wildcards.comparison} --dpi {params.dpi} --out {params.out} 2> {log}"


rule ensemble:
    input:
        unpack(ensemble_inputs),
    output:
        predictions=report_output(
            "ensemble", "ensemble_predictions.csv", figure="ensemble predictions"
        ),
        metrics=report_output(
            "ensemble", "ensemble_metrics.csv", figure="ensemble metrics per fold"
        ),
        table=report_output(
            "ensemble", "ensemble_summary.csv", figure="ensemble summary table"
        ),
        tests=report_output(
            "ensemble", "ensemble_wilcoxon.csv", figure="ensemble vs best member"
        ),
        summary=report_output("ensemble", "ensemble.md", figure="ensemble summary"),
        figure=report_output(
            "ensemble", "ensemble.png", figure="ensemble metric vs size"
        ),
    log:
        f"{LOGS}/comparisons/{{comparison}}_ensemble.log",
    wildcard_constraints:
        comparison=one_of(ENSEMBLES),
    conda:
        "../../envs/fewcells.yaml"
    params:
        members=ensemble_members,
        metric=lambda w: compare_metric(CONFIG, ENSEMBLES[w.comparison]),
        dpi=lambda w: CONFIG["experiments"][ENSEMBLES[w.comparison]["experiments"][0]][
            "plots"
        ]["dpi"],
        out=lambda w: f"{RESULTS}/comparisons/{w.comparison}",
    shell:
        "fewcells ensemble {params.members} --classes {input.classes} --metric {params.metric}"
        " --title {wildcards.comparison} --dpi {params.dpi} --out {params.out} 2> {log}"


rule compare_strategies:
    input:
        metrics=compare_inputs,
    output:
        table=report_output(
            "comparison",
            "strategies.csv",
            "strategies",
            figure="images to 95% plateau",
        ),
        figure=report_output(
            "comparison", "strategies.png", "strategies", figure="strategy curves"
        ),
    log:
        f"{LOGS}/comparisons/{{comparison}}_strategies.log",
    wildcard_constraints:
        comparison=one_of(STRATEGY_COMPARISONS),
    localrule: True
    conda:
        "../../envs/fewcells.yaml"
    params:
        names=lambda w: COMPARISONS[w.comparison]["experiments"],
        reference=lambda w: STRATEGY_COMPARISONS[w.comparison],
        metric=lambda w: compare_metric(CONFIG, COMPARISONS[w.comparison]),
        dpi=lambda w: CONFIG["experiments"][
            COMPARISONS[w.comparison]["experiments"][0]
        ]["plots"]["dpi"],
        out=lambda w: f"{RESULTS}/comparisons/{w.comparison}",
    shell:
        "fewcells compare-strategies {input.metrics} --names {params.names}"
        " --metric {params.metric} --reference {params.reference}"
        " --title {wildcards.comparison} --dpi {params.dpi} --out {params.out} 2> {log}"
