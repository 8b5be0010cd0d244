"""Flax modules: embeddings, observation encoders and denoisers."""
