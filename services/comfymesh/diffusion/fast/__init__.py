"""The fast path: channels-last fp16 UNet and the VAE's decode, compiled and CUDA-graphed per shape bucket.

A *bucket* is one set of input shapes of a module (for the UNet: batch after CFG, latent size, context
length, ADM width, dtype; for the decoder: the latent's). The first call of a new bucket runs eagerly and
queues the bucket's fast tiers on one background builder thread: for the UNet first a CUDA graph of the
eager channels-last UNet ("graphed", captured in about a second, ~3x eager's step rate), then for both
torch.compile, CUDA-graphed too ("compiled", minutes cold, seconds from the persisted cache). Calls use
the best tier in place, so compilation never blocks serving and a restarted stage serves graphed steps
within seconds while it recompiles. Captures of new buckets go before compilations. A failed tier leaves
the bucket on the tier it had (logged once).

Its switches are `comfymesh.config.fast_path.FastPathSettings`, part of the settings.

Modules: `tiers` (buckets and `FastModule`), `builder` (the
builder thread and its wait for a quiet moment), `compile_cache` (the persisted compile caches), `unet`,
`denoiser` (a registered family's model call, by its fixed-shape form) and `decoder` (the fast modules),
`manifest` (buckets to build at stage start).
"""
