"""Training objectives: example building (numpy) plus losses and metrics (jax)."""
