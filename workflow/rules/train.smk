rule train:
    input:
        images=f"{RESULTS}/{{experiment}}/store/images.npy",
        index=f"{RESULTS}/{{experiment}}/store/index.csv",
        folds=f"{RESULTS}/{{experiment}}/folds/folds.csv",
        classes=f"{RESULTS}/{{experiment}}/folds/classes.json",
        code=TRAINING_CODE,
        weights=lambda w: model_for_training(w)["weights"] or [],
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
        out=lambda w: f"{RESULTS}/{w.experiment}/train/n{w.size}/{w.run}",
        fold=lambda w: parse_run_name(w.run)[0],
        replicate=lambda w: parse_run_name(w.run)[1],
    shell:
        "fewcells train --store {params.store} --folds {params.folds}"
        " --fold {params.fold} --replicate {params.replicate} --size {wildcards.size}"
        " --image-size {params.image_size}"
        " --train-config {params.train:q} --model-config {params.model:q}"
        " --out {params.out} 2> {log}"


for many_experiment, replicates, sizes in MANY_TRAININGS_JOBS:
    # One job trains many networks: every fold (and replicate) of one training size one after
    # another in one process (train.engine: sequential) or side by side as one model
    # (stacked), or every fold of every size as one model (stacked_sweep). Sizes with another
    # number of replicates get a rule of their own.
    many_engine = train_engine(many_experiment)

    rule:
        name:
            many_trainings_rule_name(many_experiment, replicates)
        input:
            images=f"{RESULTS}/{many_experiment}/store/images.npy",
            index=f"{RESULTS}/{many_experiment}/store/index.csv",
            folds=f"{RESULTS}/{many_experiment}/folds/folds.csv",
            classes=f"{RESULTS}/{many_experiment}/folds/classes.json",
            code=TRAINING_CODE,
            weights=experiment_model(many_experiment)["weights"] or [],
        output:
            **job_outputs(many_experiment, replicates),
        log:
            f"{LOGS}/{many_experiment}/train/{job_name(many_experiment)}.log",
        benchmark:
            f"{BENCHMARKS}/{many_experiment}/train/{job_name(many_experiment)}.tsv"
        wildcard_constraints:
            size="|".join(map(str, sizes)),
        priority: job_priority(many_experiment)
        conda:
            "../../envs/fewcells.yaml"
        threads: CONFIG["experiments"][many_experiment]["train"]["threads"]
        resources:
            **job_resources(many_experiment, replicates),
        params:
            command=MANY_TRAININGS_COMMANDS[many_engine],
            replicates=f" --replicates {replicates}" if replicates > 1 else "",
            train=as_json(train_protocol(CONFIG["experiments"][many_experiment])),
            model=as_json(experiment_model(many_experiment)),
            image_size=CONFIG["experiments"][many_experiment]["image"]["size"],
            folds=",".join(map(str, fold_ids(CONFIG["experiments"][many_experiment]))),
            sizes=",".join(map(str, job_sizes(many_experiment))),
            store=f"{RESULTS}/{many_experiment}/store",
            fold_dir=f"{RESULTS}/{many_experiment}/folds",
            out=f"{RESULTS}/{many_experiment}/train",
        shell:
            "fewcells {params.command} --store {params.store} --folds {params.fold_dir}"
            " --fold-ids {params.folds} --sizes {params.sizes}{params.replicates}"
            " --image-size {params.image_size} --train-config {params.train:q}"
            " --model-config {params.model:q} --out {params.out} 2> {log}"
