"""Stage 3, analysis: metrics of the trained networks, the learning-curve fit, the summary
tables and report, comparisons and ensembles of experiments, merged classes, and figures."""
