"""Model families: layers (shared blocks), bert, gpt2, t5."""
