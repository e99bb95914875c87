# Using trained networks: images set aside before the folds (folds.set_aside), and the
# `predict` entries - classify an image set, validate on it where it has labels.


rule set_aside:
    input:
        kept_csv,
    output:
        table=f"{RESULTS}/{{experiment}}/set_aside/set_aside.csv",
        labels=f"{RESULTS}/{{experiment}}/set_aside/images/labels.csv",
    log:
        f"{LOGS}/{{experiment}}/set_aside.log",
    localrule: True
    conda:
        "../../envs/fewcells.yaml"
    params:
        per_label=lambda w: experiment_config(w)["folds"]["set_aside"],
        seed=lambda w: experiment_config(w)["folds"]["seed"],
        out=lambda w: f"{RESULTS}/{w.experiment}/set_aside",
    shell:
        "fewcells set-aside {input} --per-label {params.per_label} --seed {params.seed}"
        " --out {params.out} 2> {log}"


rule predict:
    input:
        unpack(predict_inputs),
    output:
        predictions=f"{RESULTS}/{{experiment}}/predict/{{name}}/predictions.csv",
        sheet=report_output("predict", "contact_sheet.png", figure="contact sheet"),
        metrics=f"{RESULTS}/{{experiment}}/predict/{{name}}/external_metrics.csv",
        summary=report_output("predict", "external.md", figure="external validation"),
        confusion=report_output(
            "predict", "external_confusion.png", figure="external confusion matrix"
        ),
        info=f"{RESULTS}/{{experiment}}/predict/{{name}}/predict_info.json",
    log:
        f"{LOGS}/{{experiment}}/predict/{{name}}.log",
    benchmark:
        f"{BENCHMARKS}/{{experiment}}/predict/{{name}}.tsv"
    conda:
        "../../envs/fewcells.yaml"
    threads: lambda w: predict_entry(w)["threads"]
    resources:
        mem_mb=lambda w: predict_entry(w)["mem_mb"],
    params:
        listing=predict_listing,
        train_dirs=lambda w: entry_train_dirs(CONFIG, predict_entry(w)),
        images=lambda w: as_json(predict_entry(w)["images"]),
        classes=lambda w: as_json(entry_classes(CONFIG, predict_entry(w))),
        fit=lambda w: experiment_config(w)["image"]["fit"],
        rescale=lambda w: predict_entry(w)["rescale"],
        explain=lambda w: as_json(
            {
                k: experiment_config(w)["explain"][k]
                for k in ("composite", "epsilon", "gamma")
            }
        ),
        sheet_images=lambda w: predict_entry(w)["sheet_images"],
        batch_size=lambda w: predict_entry(w)["batch_size"],
        dpi=lambda w: experiment_config(w)["plots"]["dpi"],
        out=lambda w: f"{RESULTS}/{w.experiment}/predict/{w.name}",
    shell:
        "fewcells predict --train-dirs {params.train_dirs} --classes {input.classes}"
        " --images {params.images:q} --classes-map {params.classes:q} --fit {params.fit}"
        " --rescale {params.rescale} --explain {params.explain:q}"
        " --sheet-images {params.sheet_images} --batch-size {params.batch_size}"
        " --threads {threads} --dpi {params.dpi} --experiment {wildcards.experiment}"
        " --name {wildcards.name} --out {params.out} 2> {log}"
