"""Training: the weighted multi-token-prediction loss, FSDP2 parallelism, and the training loop."""
