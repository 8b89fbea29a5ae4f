"""The diffusion stage: torch nodes and the ModelRunner service (`python -m comfymesh.diffusion`).

Packages, by responsibility: `models` (model files to resident torch modules), `text` (prompts to
conditioning), `sampling` (the KSampler loop, samplers, schedulers, cross-job batching), `latents` (latent
formats, VAE encode/decode, step previews), `fast` (compiled and CUDA-graphed modules), `nodes` (the node
implementations by group, and the registry the stage serves). `model_runner` is the ModelRunner gRPC
service; `warmup` prepares a GPU stage at start-up.
"""
