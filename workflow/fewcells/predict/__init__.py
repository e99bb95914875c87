"""Using trained networks: classify new images (an ensemble of the folds' networks),
validate on an external image set, export a network for use without fewcells."""
