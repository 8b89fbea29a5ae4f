"""Latent space: each family's latent format, VAE encode/decode, and latent-to-RGB step previews."""
