rule folds:
    input:
        unpack(folds_inputs),
    output:
        folds=f"{RESULTS}/{{experiment}}/folds/folds.csv",
        classes=f"{RESULTS}/{{experiment}}/folds/classes.json",
    log:
        f"{LOGS}/{{experiment}}/folds.log",
    wildcard_constraints:
        experiment=one_of(NOT_DIVERSE),
    conda:
        "../../envs/fewcells.yaml"
    params:
        spec=folds_spec,
        out=lambda w: f"{RESULTS}/{w.experiment}/folds",
    shell:
        "fewcells folds {input} --spec {params.spec:q} --out {params.out} 2> {log}"


# A diverse order also writes the picks (folds/selection.csv); the other strategies' folds
# jobs keep their outputs, so their finished results stay current.
use rule folds as folds_diverse with:
    output:
        folds=f"{RESULTS}/{{experiment}}/folds/folds.csv",
        classes=f"{RESULTS}/{{experiment}}/folds/classes.json",
        selection=f"{RESULTS}/{{experiment}}/folds/selection.csv",
    wildcard_constraints:
        experiment=one_of(DIVERSE),


rule store:
    input:
        kept_csv,
    output:
        images=f"{RESULTS}/{{experiment}}/store/images.npy",
        index=f"{RESULTS}/{{experiment}}/store/index.csv",
    log:
        f"{LOGS}/{{experiment}}/store.log",
    benchmark:
        f"{BENCHMARKS}/{{experiment}}/store.tsv"
    conda:
        "../../envs/fewcells.yaml"
    resources:
        mem_mb=1000,
    params:
        size=lambda w: experiment_config(w)["image"]["size"],
        fit=lambda w: experiment_config(w)["image"]["fit"],
        out=lambda w: f"{RESULTS}/{w.experiment}/store",
    shell:
        "fewcells store {input} --image-size {params.size} --fit {params.fit}"
        " --out {params.out} 2>&1 | tee {log} >&2"
