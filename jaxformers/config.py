"""Typed run settings of an experiment, and ``--set a.b=value`` overrides.

Model hyperparameters live in the model's own config dataclass (``GPT2Config`` ...); everything
about the run (data, optimizer, schedule, batch, steps, mesh, checkpoints, eval, logging) lives
here. An experiment file's ``get_config()`` returns an ``Experiment``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class DataConfig:
    corpus: str = "shakespeare"  # "shakespeare" | a file, folder or glob | "tfds:NAME"
    tokenizer: str = "bpe"  # "bpe" trains a byte-level BPE on the corpus; else a path (tokenizer.json, or dir with vocab.json + merges.txt)
    vocab_size: int = 0  # tokenizer size to train; 0 = the model's vocab_size
    seq_len: int = 128
    val_fraction: float = 0.05  # held-out tail of each local document
    seed: int = 0  # shuffling seed
    data_dir: str = ""  # TFDS data_dir; "" = $JAXFORMERS_DATA_DIR or ~/tensorflow_datasets
    # BERT (mlm_nsp): google-research/bert's create_pretraining_data.py flags
    max_predictions_per_seq: int = 20
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    dupe_factor: int = 1
    whole_word_mask: bool = False
    dynamic_masking: bool = False  # fresh masks every epoch (RoBERTa) instead of dupe_factor static copies
    lowercase: bool = True
    # T5 (span_corruption)
    noise_density: float = 0.15
    mean_noise_span_length: float = 3.0
    targets_length: int = 0  # 0 = what random_spans_helper gives for seq_len inputs


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # "adamw" | "adafactor"
    lr: float = 3e-4
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" | "constant" | "rsqrt" (T5) | "linear"
    end_lr_ratio: float = 0.1  # cosine/linear decay ends at lr * end_lr_ratio
    weight_decay: float = 0.1  # decoupled, on matrices only (embeddings included; not norms or biases)
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0  # 0 disables clipping
    grad_accum: int = 1  # microbatches per step
    total_steps: int = 0  # length of the schedule; 0 = the experiment's steps (set it for multi-phase runs)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    shape: tuple = (-1, 1, 1)  # (data, fsdp, tensor); -1 takes the devices left over


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500  # steps between saves (and one at the end)
    keep: int = 3
    async_save: bool = True


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    prompts: tuple = ("ROMEO:",)
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 40


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    model: Any  # a model config dataclass (GPT2Config, ...)
    objective: str = "causal_lm"
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    sample: SampleConfig = SampleConfig()
    batch_size: int = 32  # global, all hosts
    steps: int = 1000
    eval_every: int = 200
    eval_batches: int = 8
    log_every: int = 10
    seed: int = 0  # parameter init and dropout
    init_from: str = ""  # fine-tuning: a Hugging Face dir or a training workdir whose params seed a fresh run
    z_loss: float = 0.0  # span_corruption: weight of log(Z)^2 (t5x: 1e-4)
    label_smoothing: float = 0.0  # span_corruption
    peak_tflops: float = 0.0  # per-device peak for MFU; 0 = the table in perf.py (measured on CPU)
    nan_policy: str = "stop"  # a NaN/inf loss or gradient: "stop" (with the last good checkpoint) or "skip" the update
    progress: bool = True


def _coerce(value: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"--set {key}={value}: expected true or false")
    if isinstance(current, (int, float, tuple)) or current is None:
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            if current is None:
                return value
            raise ValueError(f"--set {key}={value}: expected a {type(current).__name__}") from None
        if isinstance(current, float) and isinstance(parsed, int):
            parsed = float(parsed)
        if isinstance(current, tuple) and isinstance(parsed, list):
            parsed = tuple(parsed)
        if current is not None and not isinstance(parsed, type(current)):
            raise ValueError(f"--set {key}={value}: expected a {type(current).__name__}, got {type(parsed).__name__}")
        return parsed
    return value


def _tree(settings: list[str]) -> dict:
    tree: dict = {}
    for s in settings:
        if "=" not in s:
            raise ValueError(f"--set {s!r}: expected key=value, e.g. --set optim.lr=1e-3")
        key, value = (p.strip() for p in s.split("=", 1))
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {key}: {part} is set as a plain value elsewhere")
        node[parts[-1]] = value
    return tree


def _apply(cfg: Any, tree: dict, prefix: str) -> Any:
    names = [f.name for f in dataclasses.fields(cfg)]
    changes = {}
    for head, value in tree.items():
        key = prefix + head
        if head not in names:
            raise ValueError(f"unknown setting {key!r} ({type(cfg).__name__}); valid keys: "
                             f"{', '.join(prefix + n for n in names)}")
        current = getattr(cfg, head)
        if isinstance(value, dict):
            if not dataclasses.is_dataclass(current):
                raise ValueError(f"{key} is a plain value, not a group: use --set {key}=...")
            changes[head] = _apply(current, value, key + ".")
        elif dataclasses.is_dataclass(current):
            raise ValueError(f"{key} is a group; set one of its fields: "
                             f"{', '.join(key + '.' + f.name for f in dataclasses.fields(current))}")
        else:
            changes[head] = _coerce(value, current, key)
    # One replace per dataclass: its checks see all of this group's new values together.
    return dataclasses.replace(cfg, **changes) if changes else cfg


def override(cfg: Any, key: str, value: str) -> Any:
    """Returns ``cfg`` with the dotted field ``key`` set from the string ``value``."""
    return apply_overrides(cfg, [f"{key}={value}"])


def apply_overrides(cfg: Any, settings: list[str] | None) -> Any:
    """``cfg`` with every ``key=value`` of ``settings`` applied (dotted keys reach nested groups).

    Unknown keys raise an error that lists the valid ones, so a typo never trains silently with
    the default; the settings of one group are applied together, so ``model.n_embd`` and
    ``model.n_head`` can change in one command.
    """
    return _apply(cfg, _tree(settings or []), "")


def load_experiment(path: str, variant: str = "default", settings: list[str] | None = None) -> Experiment:
    """Imports an experiment file and returns its ``get_config(variant)`` with overrides applied."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"experiment file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"jaxformers_experiment_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} has no get_config(); an experiment file must define one")
    return apply_overrides(module.get_config(variant), settings)
