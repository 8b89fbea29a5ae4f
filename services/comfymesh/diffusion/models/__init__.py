"""Model files to resident torch modules: recognition, conversion, loading, LoRA, the model cache."""
