"""Data: tokenizers, TFDS sources and the index-based batching pipeline."""
