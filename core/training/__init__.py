"""Training: the one Accelerate loop, pretraining a backbone, adapting it to a region."""
