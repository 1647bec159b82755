"""jaxformers: BERT, GPT-2 and T5 in JAX/Flax, numerically identical to the reference
implementations.

Import what you need: ``from jaxformers import hf, decoding``; this module stays cheap to import.
"""

__version__ = "0.1.0"
