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
    # Largest trainings first, so that a sweep ends on short jobs instead of one long job
    # running while the other cores idle.
    priority: lambda w: int(w.size)
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


for per_size_experiment in PER_SIZE_EXPERIMENTS:
    # One job per training size trains every fold of the experiment: one after another in
    # one process (train.engine: sequential) or side by side as one model (stacked).
    per_size_engine = train_engine(per_size_experiment)

    rule:
        name:
            f"train_{per_size_engine}_{per_size_experiment}"
        input:
            images=f"{RESULTS}/{per_size_experiment}/store/images.npy",
            index=f"{RESULTS}/{per_size_experiment}/store/index.csv",
            folds=f"{RESULTS}/{per_size_experiment}/folds/folds.csv",
            classes=f"{RESULTS}/{per_size_experiment}/folds/classes.json",
            code=TRAINING_CODE,
            weights=experiment_model(per_size_experiment)["weights"] or [],
        output:
            **per_size_outputs(per_size_experiment),
        log:
            f"{LOGS}/{per_size_experiment}/train/n{{size}}_{per_size_engine}.log",
        benchmark:
            f"{BENCHMARKS}/{per_size_experiment}/train/n{{size}}_{per_size_engine}.tsv"
        priority: lambda w: int(w.size)
        conda:
            "../../envs/fewcells.yaml"
        threads: CONFIG["experiments"][per_size_experiment]["train"]["threads"]
        resources:
            **per_size_resources(per_size_experiment),
        params:
            command=PER_SIZE_COMMANDS[per_size_engine],
            train=as_json(train_protocol(CONFIG["experiments"][per_size_experiment])),
            model=as_json(experiment_model(per_size_experiment)),
            image_size=CONFIG["experiments"][per_size_experiment]["image"]["size"],
            folds=",".join(
                map(str, fold_ids(CONFIG["experiments"][per_size_experiment]))
            ),
            store=f"{RESULTS}/{per_size_experiment}/store",
            fold_dir=f"{RESULTS}/{per_size_experiment}/folds",
            out=f"{RESULTS}/{per_size_experiment}/train/n{{size}}",
        shell:
            "fewcells {params.command} --store {params.store} --folds {params.fold_dir}"
            " --fold-ids {params.folds} --size {wildcards.size}"
            " --image-size {params.image_size} --train-config {params.train:q}"
            " --model-config {params.model:q} --out {params.out} 2> {log}"
