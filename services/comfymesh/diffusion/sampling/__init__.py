"""The sampling loop: model sampling, noise, guidance (CFG), samplers, schedulers, cross-job batching and
step reporting."""
