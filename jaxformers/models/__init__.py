"""The family registry: one record per model family, the only place that chooses by family.

A family is found from the ``family`` class attribute of a model config (``GPT2Config.family ==
"gpt2"``), from the ``model_type`` of a Hugging Face config.json, or from the ``family`` a training
run writes into ``model.json``; never from class names. Adding a family or a head is one entry here
(plus its model file); the trainer, inference, decoding, HF conversion and benchmarks look it up.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from jaxformers.models import bert, gpt2, t5


@dataclasses.dataclass(frozen=True)
class Family:
    """What jaxformers knows about one model family.

    Attributes:
      name: the family's id: HF ``model_type`` and ``model.json``'s ``family``.
      config_class: its config dataclass.
      heads: HF architecture name -> module class (every head/task model of the family).
      default_head: the architecture a config without one builds (training from scratch).
      module: the model file; it provides ``config_from_hf``, ``config_to_hf``, ``hf_weights``
        (the HF conversion table) and ``model_from_config``.
      tokenizer: the tokenizer kind trained for and saved beside the model: "bpe" (byte-level,
        GPT-2), "wordpiece" (BERT) or "sentencepiece" (T5).
      decoder: the decoding adapter of ``jaxformers.decoding``: "causal" (prompt continued in one
        stream), "seq2seq" (encoder once, decoder generates) or None (no generation).
      default_task: the training task of an experiment that names none.
      max_length: the config field bounding the sequence length.
      example_inputs: config -> the smallest positional inputs ``model.init`` accepts.
      base: the params subtree in which head models keep the base model ("bert"), or None.
    """

    name: str
    config_class: type
    heads: dict[str, type]
    default_head: str
    module: ModuleType
    tokenizer: str
    decoder: str | None
    default_task: str
    max_length: str
    example_inputs: Callable[[Any], tuple]
    base: str | None = None

    def build(self, config: Any, architecture: str | None = None):
        """The flax module for ``config``: the head ``architecture``, else the config's own, else
        ``default_head``."""
        arch = architecture or getattr(config, "architecture", None) or self.default_head
        if arch not in self.heads:
            raise ValueError(
                f"{self.name} has no head {arch!r}; choose one of {sorted(self.heads)}"
            )
        return self.heads[arch](config)

    def max_positions(self, config: Any) -> int:
        return int(getattr(config, self.max_length))


def _ids(n: int) -> Callable[[Any], tuple]:
    return lambda config: tuple(np.zeros((1, 1), np.int32) for _ in range(n))


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "gpt2",
            gpt2.GPT2Config,
            {"GPT2LMHeadModel": gpt2.GPT2LMHeadModel},
            "GPT2LMHeadModel",
            gpt2,
            tokenizer="bpe",
            decoder="causal",
            default_task="causal_lm",
            max_length="n_positions",
            example_inputs=_ids(1),
        ),
        Family(
            "bert",
            bert.BertConfig,
            dict(bert.MODEL_CLASSES),
            "BertForPreTraining",
            bert,
            tokenizer="wordpiece",
            decoder=None,
            default_task="mlm_nsp",
            max_length="max_position_embeddings",
            example_inputs=_ids(1),
            base="bert",
        ),
        Family(
            "t5",
            t5.T5Config,
            {"T5ForConditionalGeneration": t5.T5ForConditionalGeneration},
            "T5ForConditionalGeneration",
            t5,
            tokenizer="sentencepiece",
            decoder="seq2seq",
            default_task="span_corruption",
            max_length="n_positions",
            example_inputs=_ids(2),
        ),
    )
}


def get(name: str) -> Family:
    """The family named ``name`` (a ``model_type`` / ``family`` string)."""
    if name not in FAMILIES:
        raise ValueError(
            f"model family {name!r} is not supported; jaxformers implements {sorted(FAMILIES)}"
        )
    return FAMILIES[name]


def of_config(config: Any) -> Family:
    """The family of a jaxformers model config (its ``family`` class attribute)."""
    name = getattr(type(config), "family", None)
    if not isinstance(name, str):
        raise ValueError(f"{type(config).__name__} is not a jaxformers model config")
    return get(name)


def of_model(model: Any) -> Family:
    """The family of a jaxformers flax module (through its config)."""
    return of_config(getattr(model, "config", None))


def build_model(config: Any, architecture: str | None = None):
    """The flax module of ``config``'s family (see ``Family.build``)."""
    return of_config(config).build(config, architecture)
