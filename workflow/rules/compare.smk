rule compare:
    input:
        metrics=compare_inputs,
    output:
        table=comparison_output("comparison.csv", "comparison table"),
        tests=comparison_output("wilcoxon.csv", "Wilcoxon tests"),
        summary=comparison_output("comparison.md", "summary"),
        figure=comparison_output("comparison.png", "metric vs size"),
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
