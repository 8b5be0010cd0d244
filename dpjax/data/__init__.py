"""Demonstration datasets: RLDS episodes stored as TFDS array_record, windows, normalizer."""
