"""The fast path: compiled and CUDA-graphed modules per shape bucket."""
