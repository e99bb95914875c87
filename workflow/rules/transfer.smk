rule pretrain:
    input:
        images=f"{RESULTS}/{{experiment}}/store/images.npy",
        index=f"{RESULTS}/{{experiment}}/store/index.csv",
        code=PRETRAINING_CODE,
        weights=lambda w: experiment_config(w)["model"]["weights"] or [],
    output:
        model=f"{PRETRAINED}/{{experiment}}/model.ckpt",
        history=f"{PRETRAINED}/{{experiment}}/history.csv",
        info=f"{PRETRAINED}/{{experiment}}/train_info.json",
        split=f"{PRETRAINED}/{{experiment}}/split.csv",
        classes=f"{PRETRAINED}/{{experiment}}/classes.json",
    log:
        f"{LOGS}/{{experiment}}/pretrain.log",
    benchmark:
        f"{BENCHMARKS}/{{experiment}}/pretrain.tsv"
    conda:
        "../../envs/fewcells.yaml"
    threads: lambda w: experiment_config(w)["pretrain"]["threads"]
    resources:
        mem_mb=lambda w: experiment_config(w)["pretrain"]["mem_mb"],
        runtime=lambda w: experiment_config(w)["pretrain"]["runtime"],
        gpu=lambda w: experiment_config(w)["pretrain"]["gpus"],
    params:
        train=lambda w: as_json(pretrain_job_config(experiment_config(w))),
        model=lambda w: as_json(model_job_config(experiment_config(w), PRETRAINED)),
        classes=lambda w: as_json(experiment_config(w).get("classes")),
        image_size=lambda w: experiment_config(w)["image"]["size"],
        val_fraction=lambda w: experiment_config(w)["pretrain"]["val_fraction"],
        seed=lambda w: experiment_config(w)["pretrain"]["seed"],
        store=lambda w: f"{RESULTS}/{w.experiment}/store",
        out=lambda w: f"{PRETRAINED}/{w.experiment}",
    shell:
        "fewcells pretrain --store {params.store} --classes {params.classes:q}"
        " --image-size {params.image_size} --train-config {params.train:q}"
        " --model-config {params.model:q} --val-fraction {params.val_fraction}"
        " --seed {params.seed} --out {params.out} 2> {log}"
