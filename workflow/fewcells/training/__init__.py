"""Stage 2, training: the networks (models), their augmentation, the Lightning DataModule and
LightningModule, the training engines (one network per job, sequential, stacked) and
pretraining for transfer learning; `kernels/` holds the compiled CPU kernels.

Every file here is an input of the training jobs (pretrain.py of the pretraining jobs only),
so editing one reruns them."""
