rule train:
    input:
        images=f"{RESULTS}/{{experiment}}/store/images.npy",
        index=f"{RESULTS}/{{experiment}}/store/index.csv",
        folds=f"{RESULTS}/{{experiment}}/folds/folds.csv",
        classes=f"{RESULTS}/{{experiment}}/folds/classes.json",
        code=TRAINING_CODE,
        weights=lambda w: experiment_config(w)["model"]["weights"] or [],
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
        model=lambda w: as_json(experiment_config(w)["model"]),
        image_size=lambda w: experiment_config(w)["image"]["size"],
        store=lambda w: f"{RESULTS}/{w.experiment}/store",
        folds=lambda w: f"{RESULTS}/{w.experiment}/folds",
        out=lambda w: f"{RESULTS}/{w.experiment}/train/n{w.size}/fold{w.fold}",
    shell:
        "fewcells train --store {params.store} --folds {params.folds}"
        " --fold {wildcards.fold} --size {wildcards.size} --image-size {params.image_size}"
        " --train-config {params.train:q} --model-config {params.model:q}"
        " --out {params.out} 2> {log}"
