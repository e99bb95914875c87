"""fewcells: how many annotated single-cell images does a leukocyte classifier need?

Reproduces Schouten et al., Sci. Rep. 2021. See README.md; every config key is described
in workflow/schemas/config.schema.yaml.
"""

from snakemake.utils import min_version

min_version("9.0")


report: "workflow/report/workflow.rst"


# The demo config is the default only: a --configfile replaces it (instead of being merged
# over it), so that a user's config without `run:` runs the user's experiments.
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/targets.smk"
include: "workflow/rules/inputs.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/folds.smk"
include: "workflow/rules/selection.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/explain.smk"
include: "workflow/rules/compare.smk"
include: "workflow/rules/predict.smk"


rule all:
    default_target: True
    input:
        all_targets(),
