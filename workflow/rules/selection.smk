rule select_round:
    input:
        unpack(select_round_inputs),
    output:
        folds=f"{RESULTS}/{{experiment}}/selection/fold{{fold}}/n{{size}}/folds.csv",
        classes=f"{RESULTS}/{{experiment}}/selection/fold{{fold}}/n{{size}}/classes.json",
        selection=f"{RESULTS}/{{experiment}}/selection/fold{{fold}}/n{{size}}/selection.csv",
    log:
        f"{LOGS}/{{experiment}}/selection/fold{{fold}}_n{{size}}.log",
    benchmark:
        f"{BENCHMARKS}/{{experiment}}/selection/fold{{fold}}_n{{size}}.tsv"
    wildcard_constraints:
        experiment=one_of(UNCERTAIN),
    conda:
        "../../envs/fewcells.yaml"
    params:
        rounds=select_round_arguments,
        spec=lambda w: as_json(selection_spec(w.experiment)),
        store=lambda w: f"{RESULTS}/{w.experiment}/store",
        folds=lambda w: f"{RESULTS}/{w.experiment}/folds",
        out=lambda w: f"{RESULTS}/{w.experiment}/selection/fold{w.fold}/n{w.size}",
    shell:
        "fewcells select-round --folds {params.folds} --store {params.store}"
        " --fold {wildcards.fold} --size {wildcards.size} {params.rounds}"
        " --spec {params.spec:q} --out {params.out} 2> {log}"


rule selection_summary:
    input:
        folds=f"{RESULTS}/{{experiment}}/folds/folds.csv",
        rounds=selection_summary_rounds,
        picks=selection_summary_picks,
    output:
        selection=f"{RESULTS}/{{experiment}}/selection/selection.csv",
        class_mix=f"{RESULTS}/{{experiment}}/selection/class_mix.csv",
    log:
        f"{LOGS}/{{experiment}}/selection/summary.log",
    wildcard_constraints:
        experiment=one_of(SELECTED),
    localrule: True
    conda:
        "../../envs/fewcells.yaml"
    params:
        sizes=lambda w: ",".join(map(str, experiment_config(w)["folds"]["sizes"])),
        rounds=lambda w, input: " ".join(str(Path(p).parent) for p in input.rounds),
        folds=lambda w: f"{RESULTS}/{w.experiment}/folds",
        out=lambda w: f"{RESULTS}/{w.experiment}/selection",
    shell:
        "fewcells selection-summary --folds {params.folds} --sizes {params.sizes}"
        " --rounds {params.rounds} --out {params.out} 2> {log}"
