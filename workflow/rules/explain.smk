rule explain:
    input:
        unpack(explain_inputs),
    output:
        maps=report_output("explain", "relevance_maps.png", figure="relevance maps"),
        shares=f"{RESULTS}/{{experiment}}/explain/fold{{fold}}/relevance_shares.csv",
        summary=report_output(
            "explain", "relevance_summary.csv", figure="relevance shares table"
        ),
        plot=report_output("explain", "relevance_shares.png", figure="relevance shares"),
        masks=f"{RESULTS}/{{experiment}}/explain/fold{{fold}}/masks.csv",
    log:
        f"{LOGS}/{{experiment}}/explain/fold{{fold}}.log",
    benchmark:
        f"{BENCHMARKS}/{{experiment}}/explain/fold{{fold}}.tsv"
    conda:
        "../../envs/fewcells.yaml"
    threads: 1
    resources:
        mem_mb=lambda w: experiment_config(w)["explain"]["mem_mb"],
    params:
        sizes=lambda w: " ".join(map(str, explain_sizes(experiment_config(w)))),
        settings=explain_settings,
        masks=masks_option,
        fit=lambda w: experiment_config(w)["image"]["fit"],
        dpi=lambda w: experiment_config(w)["plots"]["dpi"],
        store=lambda w: f"{RESULTS}/{w.experiment}/store",
        folds=lambda w: f"{RESULTS}/{w.experiment}/folds",
        train_root=lambda w: f"{RESULTS}/{w.experiment}/train",
        out=lambda w: f"{RESULTS}/{w.experiment}/explain/fold{w.fold}",
    shell:
        "fewcells explain --store {params.store} --folds {params.folds}"
        " --train-root {params.train_root} --fold {wildcards.fold} --sizes {params.sizes}"
        " --settings {params.settings:q} {params.masks} --fit {params.fit}"
        " --experiment {wildcards.experiment} --dpi {params.dpi} --threads {threads}"
        " --out {params.out} 2> {log}"


rule tsne:
    input:
        classes=f"{RESULTS}/{{experiment}}/folds/classes.json",
        embeddings=lambda w: [
            f"{RESULTS}/{w.experiment}/train/n{size}/fold{w.fold}/embeddings.npz"
            for size in tsne_sizes(experiment_config(w))
        ],
    output:
        figure=report_output("tsne", "tsne.png", figure="tSNE"),
        coordinates=f"{RESULTS}/{{experiment}}/tsne/fold{{fold}}/tsne_coordinates.csv",
        table=report_output(
            "tsne",
            "separation.csv",
            caption="separation_table",
            figure="class separation table",
        ),
        plot=report_output("tsne", "separation.png", figure="class separation"),
    log:
        f"{LOGS}/{{experiment}}/tsne/fold{{fold}}.log",
    conda:
        "../../envs/fewcells.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        sizes=lambda w: " ".join(map(str, tsne_sizes(experiment_config(w)))),
        perplexity=lambda w: experiment_config(w)["tsne"]["perplexity"],
        seed=lambda w: experiment_config(w)["tsne"]["seed"],
        knn=lambda w: experiment_config(w)["tsne"]["knn"],
        dpi=lambda w: experiment_config(w)["plots"]["dpi"],
        train_root=lambda w: f"{RESULTS}/{w.experiment}/train",
        out=lambda w: f"{RESULTS}/{w.experiment}/tsne/fold{w.fold}",
    shell:
        "fewcells tsne --train-root {params.train_root} --fold {wildcards.fold}"
        " --sizes {params.sizes} --classes {input.classes} --perplexity {params.perplexity}"
        " --seed {params.seed} --knn {params.knn} --experiment {wildcards.experiment}"
        " --dpi {params.dpi} --out {params.out} 2> {log}"
