rule train:
    input:
        images=f"{RESULTS}/{{experiment}}/store/images.npy",
        index=f"{RESULTS}/{{experiment}}/store/index.csv",
        folds=f"{RESULTS}/{{experiment}}/folds/folds.csv",
        classes=f"{RESULTS}/{{experiment}}/folds/classes.json",
        code=TRAINING_CODE,
        weights=lambda w: model_for_training(w)["weights"] or [],
    output:
        model=f"{RESULTS}/{{experiment}}/train/n{{size}}/fold{{fold}}/model.ckpt",
        history=f"{RESULTS}/{{experiment}}/train/n{{size}}/fold{{fold}}/history.csv",
        predictions=f"{RESULTS}/{{experiment}}/train/n{{size}}/fold{{fold}}/predictions.csv",
        embeddings=f"{RESULTS}/{{experiment}}/train/n{{size}}/fold{{fold}}/embeddings.npz",
        info=f"{RESULTS}/{{experiment}}/train/n{{size}}/fold{{fold}}/train_info.json",
    log:
        f"{LOGS}/{{experiment}}/train/n{{size}}_fold{{fold}}.log",
    benchmark:
        f"{BENCHMARKS}/{{experiment}}/train/n{{size}}_fold{{fold}}.tsv"
    wildcard_constraints:
        experiment=PER_FOLD_EXPERIMENTS,
    conda:
        "../../envs/fewcells.yaml"
    threads: lambda w: CONFIG["experiments"][w.experiment]["train"]["threads"]
    resources:
        mem_mb=lambda w, attempt: train_resource(w, "mem_mb", attempt),
        runtime=lambda w, attempt: train_resource(w, "runtime", attempt),
        gpu=lambda w: CONFIG["experiments"][w.experiment]["train"]["gpus"],
        gpu_model=gpu_model,
    params:
        train=lambda w: as_json(train_protocol(experiment_config(w))),
        model=lambda w: as_json(model_for_training(w)),
        image_size=lambda w: experiment_config(w)["image"]["size"],
        store=lambda w: f"{RESULTS}/{w.experiment}/store",
        folds=lambda w: f"{RESULTS}/{w.experiment}/folds",
        out=lambda w: f"{RESULTS}/{w.experiment}/train/n{w.size}/fold{w.fold}",
    shell:
        "fewcells train --store {params.store} --folds {params.folds}"
        " --fold {wildcards.fold} --size {wildcards.size} --image-size {params.image_size}"
        " --train-config {params.train:q} --model-config {params.model:q}"
        " --out {params.out} 2> {log}"


for stacked_experiment in STACKED_EXPERIMENTS:
    # One job per training size trains all of the experiment's folds (train.engine: stacked).

    rule:
        name:
            f"train_stacked_{stacked_experiment}"
        input:
            images=f"{RESULTS}/{stacked_experiment}/store/images.npy",
            index=f"{RESULTS}/{stacked_experiment}/store/index.csv",
            folds=f"{RESULTS}/{stacked_experiment}/folds/folds.csv",
            classes=f"{RESULTS}/{stacked_experiment}/folds/classes.json",
            code=TRAINING_CODE,
            weights=CONFIG["experiments"][stacked_experiment]["model"]["weights"] or [],
        output:
            **stacked_outputs(stacked_experiment),
        log:
            f"{LOGS}/{stacked_experiment}/train/n{{size}}_stacked.log",
        benchmark:
            f"{BENCHMARKS}/{stacked_experiment}/train/n{{size}}_stacked.tsv"
        conda:
            "../../envs/fewcells.yaml"
        threads: CONFIG["experiments"][stacked_experiment]["train"]["threads"]
        resources:
            **stacked_resources(stacked_experiment),
        params:
            train=as_json(train_protocol(CONFIG["experiments"][stacked_experiment])),
            model=as_json(CONFIG["experiments"][stacked_experiment]["model"]),
            image_size=CONFIG["experiments"][stacked_experiment]["image"]["size"],
            folds=",".join(
                map(str, fold_ids(CONFIG["experiments"][stacked_experiment]))
            ),
            store=f"{RESULTS}/{stacked_experiment}/store",
            fold_dir=f"{RESULTS}/{stacked_experiment}/folds",
            out=f"{RESULTS}/{stacked_experiment}/train/n{{size}}",
        shell:
            "fewcells train-stacked --store {params.store} --folds {params.fold_dir}"
            " --fold-ids {params.folds} --size {wildcards.size}"
            " --image-size {params.image_size} --train-config {params.train:q}"
            " --model-config {params.model:q} --out {params.out} 2> {log}"
