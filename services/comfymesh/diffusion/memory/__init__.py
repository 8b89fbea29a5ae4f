"""Memory of the diffusion stage: what fits the budget, the fp8 matmul choice, text encoders leaving the GPU, and
transformer blocks streamed from host memory (see architecture.md, "Memory")."""
