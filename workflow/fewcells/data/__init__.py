"""Stage 1, the data: fetch a data set (or generate the demo), list its images (manifest),
remove duplicates (dedup), split it into folds, and store the images as one uint8 tensor."""
