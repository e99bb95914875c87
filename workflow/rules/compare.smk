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


rule ensemble:
    input:
        unpack(ensemble_inputs),
    output:
        predictions=ensemble_output("ensemble_predictions.csv", "ensemble predictions"),
        metrics=ensemble_output("ensemble_metrics.csv", "ensemble metrics per fold"),
        table=ensemble_output("ensemble_summary.csv", "ensemble summary table"),
        tests=ensemble_output("ensemble_wilcoxon.csv", "ensemble vs best member"),
        summary=ensemble_output("ensemble.md", "ensemble summary"),
        figure=ensemble_output("ensemble.png", "ensemble metric vs size"),
    log:
        f"{LOGS}/comparisons/{{comparison}}_ensemble.log",
    wildcard_constraints:
        comparison="|".join(ENSEMBLES) or "__none__",
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
