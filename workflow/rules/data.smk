rule fetch:
    output:
        f"{DATASETS}/{{dataset}}/source.json",
    log:
        f"{LOGS}/fetch/{{dataset}}.log",
    localrule: True
    conda:
        "../../envs/fewcells.yaml"
    params:
        dataset=lambda w: as_json(
            {
                k: v
                for k, v in CONFIG["datasets"][w.dataset].items()
                if k in ("kind", "source", "demo")
            }
        ),
        out=lambda w: f"{DATASETS}/{w.dataset}",
    shell:
        "fewcells fetch --dataset {params.dataset:q} --out {params.out} 2>&1 | tee {log} >&2"


rule manifest:
    input:
        f"{DATASETS}/{{dataset}}/source.json",
    output:
        f"{DATASETS}/{{dataset}}/manifest.csv",
    log:
        f"{LOGS}/manifest/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/manifest/{{dataset}}.tsv"
    conda:
        "../../envs/fewcells.yaml"
    resources:
        mem_mb=1000,
    params:
        # a path: source's file listing (names, sizes, contents), so that added, removed or
        # rewritten files rerun the manifest; a copy with new mtimes does not
        listing=lambda w: source_listing(
            CONFIG["datasets"][w.dataset], cache=f"{DATASETS}/{w.dataset}/listing.json"
        ),
        kind=lambda w: CONFIG["datasets"][w.dataset]["kind"],
        on_bad_image=lambda w: CONFIG["datasets"][w.dataset]["on_bad_image"],
        labels_csv=lambda w: CONFIG["datasets"][w.dataset]["labels_csv"],
        annotations=lambda w: (
            f"--annotations {CONFIG['datasets'][w.dataset]['annotations']}"
            if CONFIG["datasets"][w.dataset]["annotations"]
            else ""
        ),
    shell:
        "fewcells manifest {input} --kind {params.kind} --on-bad-image {params.on_bad_image}"
        " --labels-csv {params.labels_csv:q} {params.annotations} --out {output} 2>&1 | tee {log} >&2"


rule dedup:
    input:
        f"{DATASETS}/{{dataset}}/manifest.csv",
    output:
        pairs=f"{DATASETS}/{{dataset}}/dedup/pairs.csv",
        kept=f"{DATASETS}/{{dataset}}/dedup/kept.csv",
        summary=report_output("dedup", "dedup_summary.json", output="deduplication"),
    log:
        f"{LOGS}/dedup/{{dataset}}.log",
    benchmark:
        f"{BENCHMARKS}/dedup/{{dataset}}.tsv"
    conda:
        "../../envs/fewcells.yaml"
    threads: 2
    resources:
        mem_mb=1000,
    params:
        settings=lambda w: as_json(CONFIG["datasets"][w.dataset]["dedup"]),
        out=lambda w: f"{DATASETS}/{w.dataset}/dedup",
    shell:
        "fewcells dedup {input} --settings {params.settings:q} --threads {threads}"
        " --out {params.out} 2>&1 | tee {log} >&2"
