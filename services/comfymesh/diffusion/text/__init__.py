"""Prompts to conditioning: the tokenizer, prompt weights, and the text encoders' windows and layers."""
