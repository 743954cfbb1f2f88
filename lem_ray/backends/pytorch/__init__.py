"""Hugging Face transformers on PyTorch: eager, static-cache and compiled decoding."""
