"""The torch side of the diffusion stage: checkpoints, text encoding, sampling and the node implementations."""
