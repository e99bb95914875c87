rule train:
    input:
        images=f"{RESULTS}/{{experiment}}/store/images.npy",
        index=f"{RESULTS}/{{experiment}}/store/index.csv",
        folds=lambda w: f"{training_folds(w)}/folds.csv",
        classes=lambda w: f"{training_folds(w)}/classes.json",
        code=TRAINING_CODE,
        weights=lambda w: model_job_config(experiment_config(w), PRETRAINED)["weights"]
        or [],
    output:
        model=f"{RESULTS}/{{experiment}}/train/n{{size}}/{{run}}/model.ckpt",
        history=f"{RESULTS}/{{experiment}}/train/n{{size}}/{{run}}/history.csv",
        predictions=f"{RESULTS}/{{experiment}}/train/n{{size}}/{{run}}/predictions.csv",
        embeddings=f"{RESULTS}/{{experiment}}/train/n{{size}}/{{run}}/embeddings.npz",
        info=f"{RESULTS}/{{experiment}}/train/n{{size}}/{{run}}/train_info.json",
    log:
        f"{LOGS}/{{experiment}}/train/n{{size}}_{{run}}.log",
    benchmark:
        f"{BENCHMARKS}/{{experiment}}/train/n{{size}}_{{run}}.tsv"
    wildcard_constraints:
        experiment=one_of(PER_FOLD_EXPERIMENTS),
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
        train=lambda w: as_json(train_job_config(experiment_config(w))),
        model=lambda w: as_json(model_job_config(experiment_config(w), PRETRAINED)),
        image_size=lambda w: experiment_config(w)["image"]["size"],
        store=lambda w: f"{RESULTS}/{w.experiment}/store",
        folds=training_folds,
        out=lambda w: f"{RESULTS}/{w.experiment}/train/n{w.size}/{w.run}",
        fold=lambda w: parse_run_name(w.run)[0],
        replicate=lambda w: parse_run_name(w.run)[1],
    shell:
        "fewcells train --store {params.store} --folds {params.folds}"
        " --fold {params.fold} --replicate {params.replicate} --size {wildcards.size}"
        " --image-size {params.image_size}"
        " --train-config {params.train:q} --model-config {params.model:q}"
        " --out {params.out} 2> {log}"


for experiment_name, replicates, sizes in MULTI_NETWORK_JOBS:
    # One job trains many networks: every fold (and replicate) of one training size one after
    # another in one process (train.engine: sequential) or side by side as one model
    # (stacked), or every fold of every size as one model (stacked_sweep). Sizes with another
    # number of replicates get a rule of their own.
    multi_network = CONFIG["experiments"][experiment_name]

    rule:
        name:
            multi_network_rule_name(experiment_name, replicates)
        input:
            images=f"{RESULTS}/{experiment_name}/store/images.npy",
            index=f"{RESULTS}/{experiment_name}/store/index.csv",
            folds=f"{RESULTS}/{experiment_name}/folds/folds.csv",
            classes=f"{RESULTS}/{experiment_name}/folds/classes.json",
            code=TRAINING_CODE,
            weights=model_job_config(multi_network, PRETRAINED)["weights"] or [],
        output:
            **job_outputs(experiment_name, replicates),
        log:
            f"{LOGS}/{experiment_name}/train/{job_name(experiment_name)}.log",
        benchmark:
            f"{BENCHMARKS}/{experiment_name}/train/{job_name(experiment_name)}.tsv"
        wildcard_constraints:
            size="|".join(map(str, sizes)),
        priority: job_priority(experiment_name)
        conda:
            "../../envs/fewcells.yaml"
        threads: multi_network["train"]["threads"]
        resources:
            **job_resources(experiment_name, replicates),
        params:
            command=MULTI_NETWORK_COMMANDS[train_engine(experiment_name)],
            replicates=f" --replicates {replicates}" if replicates > 1 else "",
            train=as_json(train_job_config(multi_network)),
            model=as_json(model_job_config(multi_network, PRETRAINED)),
            image_size=multi_network["image"]["size"],
            folds=",".join(map(str, fold_ids(multi_network))),
            sizes=",".join(map(str, job_sizes(experiment_name))),
            store=f"{RESULTS}/{experiment_name}/store",
            fold_dir=f"{RESULTS}/{experiment_name}/folds",
            out=f"{RESULTS}/{experiment_name}/train",
        shell:
            "fewcells {params.command} --store {params.store} --folds {params.fold_dir}"
            " --fold-ids {params.folds} --sizes {params.sizes}{params.replicates}"
            " --image-size {params.image_size} --train-config {params.train:q}"
            " --model-config {params.model:q} --out {params.out} 2> {log}"
