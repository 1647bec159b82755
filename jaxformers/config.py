"""Typed run settings of an experiment, and ``--set a.b=value`` overrides.

Model hyperparameters live in the model's own config dataclass (``GPT2Config`` ...); everything
about the run (data, optimizer, schedule, batch, steps, mesh, checkpoints, eval, logging) lives
here. An experiment file's ``get_config()`` returns an ``Experiment``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import math
import os
from typing import Any

from jaxformers import models, tasks


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    """ValueError naming the setting as ``--set`` spells it, e.g. "optim.lr=-1.0 must be > 0"."""
    if not ok:
        raise ValueError(f"{key}={value!r} {rule}")


def _whole(value: Any, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The text a task reads and how it is cut; task-specific settings live in the task."""

    corpus: str = "shakespeare"  # "shakespeare" | a file, folder or glob | "tfds:NAME"
    # "train": train the model family's tokenizer (byte-level BPE for GPT-2, WordPiece for BERT,
    # SentencePiece for T5) on the corpus; or a path to one of that kind (a directory or its file).
    tokenizer: str = "train"
    vocab_size: int = 0  # tokenizer size to train; 0 = the model's vocab_size
    lowercase: bool = True  # WordPiece only: an uncased vocabulary
    seq_len: int = 128
    val_fraction: float = 0.05  # held-out tail of each local document (unused with val_corpus)
    # a validation corpus of its own (file, folder, glob or tfds:NAME[:SPLIT]), read whole; the
    # training corpus is then used whole
    val_corpus: str = ""
    seed: int = 0  # shuffling seed
    # TFDS data_dir for prepared data; "" = $JAXFORMERS_DATA_DIR if set, else WORKDIR/data/tfds
    data_dir: str = ""
    # BERT and T5 examples are built while training (jaxformers.data.streaming): grain worker
    # processes that build them (0: this process; the batches are the same for any count)
    worker_count: int = 0
    # examples mixed across documents by a window shuffle (BERT, T5; 0 or 1: document order)
    shuffle_window: int = 4096
    # BERT and T5 streams: data shards the documents are dealt to (0: one per host). The batches
    # depend on this, not on the host count: fix it to keep a run's data order on other hosts.
    stream_shards: int = 0
    # tokenizer training reads at most this many bytes of the corpus, a fixed sample of its
    # documents (as T5 trained its SentencePiece model on a sample of C4); 0: all of it
    tokenizer_sample_bytes: int = 16_000_000

    def __post_init__(self):
        _require(
            _whole(self.seq_len, 1),
            "data.seq_len",
            self.seq_len,
            "must be a whole number of at least 1",
        )
        _require(
            _whole(self.vocab_size, 0),
            "data.vocab_size",
            self.vocab_size,
            "must be >= 0 (0: the model's)",
        )
        _require(
            0.0 <= self.val_fraction < 1.0,
            "data.val_fraction",
            self.val_fraction,
            "must lie in [0, 1)",
        )
        _require(_whole(self.seed, 0), "data.seed", self.seed, "must be a whole number >= 0")
        for key in ("worker_count", "shuffle_window", "stream_shards", "tokenizer_sample_bytes"):
            _require(
                _whole(getattr(self, key), 0),
                f"data.{key}",
                getattr(self, key),
                "must be a whole number >= 0",
            )
        _require(bool(self.corpus), "data.corpus", self.corpus, "must name a corpus")


OPTIMIZERS = ("adamw", "adafactor")
SCHEDULES = ("cosine", "constant", "rsqrt", "linear")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # "adamw" | "adafactor"
    lr: float = 3e-4
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" | "constant" | "rsqrt" (T5) | "linear"
    end_lr_ratio: float = 0.1  # cosine/linear decay ends at lr * end_lr_ratio
    weight_decay: float = (
        0.1  # decoupled, on matrices only (embeddings included; not norms or biases)
    )
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0  # 0 disables clipping
    grad_accum: int = 1  # microbatches per step
    total_steps: int = (
        0  # length of the schedule; 0 = the experiment's steps (set it for multi-phase runs)
    )

    def __post_init__(self):
        _require(self.name in OPTIMIZERS, "optim.name", self.name, f"is not one of {OPTIMIZERS}")
        _require(
            self.schedule in SCHEDULES,
            "optim.schedule",
            self.schedule,
            f"is not one of {SCHEDULES}",
        )
        _require(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        _require(
            _whole(self.warmup_steps, 0),
            "optim.warmup_steps",
            self.warmup_steps,
            "must be a whole number >= 0",
        )
        _require(
            0.0 <= self.end_lr_ratio <= 1.0,
            "optim.end_lr_ratio",
            self.end_lr_ratio,
            "must lie in [0, 1]",
        )
        _require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        for key in ("b1", "b2"):
            _require(
                0.0 <= getattr(self, key) < 1.0,
                f"optim.{key}",
                getattr(self, key),
                "must lie in [0, 1)",
            )
        _require(self.eps > 0, "optim.eps", self.eps, "must be > 0")
        _require(
            self.clip_norm >= 0,
            "optim.clip_norm",
            self.clip_norm,
            "must be >= 0 (0 disables clipping)",
        )
        _require(
            _whole(self.grad_accum, 1),
            "optim.grad_accum",
            self.grad_accum,
            "must be a whole number of at least 1",
        )
        _require(
            _whole(self.total_steps, 0),
            "optim.total_steps",
            self.total_steps,
            "must be a whole number >= 0 (0: the experiment's steps)",
        )


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    shape: tuple = (-1, 1, 1)  # (data, fsdp, tensor); -1 takes the devices left over

    def __post_init__(self):
        ok = (
            isinstance(self.shape, tuple)
            and len(self.shape) == 3
            and all(_whole(n, 1) or n == -1 for n in self.shape)
            and list(self.shape).count(-1) <= 1
        )
        _require(
            ok,
            "mesh.shape",
            self.shape,
            "must be three sizes (data, fsdp, tensor), each >= 1 or one -1",
        )


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 500  # steps between saves (and one at the end)
    keep: int = 3
    async_save: bool = True

    def __post_init__(self):
        _require(
            _whole(self.every, 1),
            "checkpoint.every",
            self.every,
            "must be a whole number of at least 1",
        )
        _require(
            _whole(self.keep, 1),
            "checkpoint.keep",
            self.keep,
            "must be a whole number of at least 1",
        )


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    prompts: tuple = ("ROMEO:",)
    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int = 40

    def __post_init__(self):
        _require(
            _whole(self.max_new_tokens, 0),
            "sample.max_new_tokens",
            self.max_new_tokens,
            "must be a whole number >= 0 (0: no samples)",
        )
        _require(self.temperature > 0, "sample.temperature", self.temperature, "must be > 0")
        _require(
            _whole(self.top_k, 0),
            "sample.top_k",
            self.top_k,
            "must be a whole number >= 0 (0: no top-k)",
        )


NAN_POLICIES = ("stop", "skip")


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    model: Any  # a model config dataclass (GPT2Config, ...)
    task: Any = None  # a task (jaxformers.tasks); None = the model family's default task
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    sample: SampleConfig = SampleConfig()
    batch_size: int = 32  # global, all hosts
    # The training length: steps, or a budget the data turns into steps (``resolve_steps``):
    # tokens (of training inputs) or epochs (passes over the training split). Give one; two that
    # are both set must agree. ``--set tokens=N`` / ``epochs=X`` replace the experiment's steps.
    steps: int = 1000
    tokens: int = 0
    epochs: float = 0.0
    eval_every: int = 200  # 0: evaluate only at the end
    # 0: the whole validation split, every example (or token) exactly once; N: its first N batches
    eval_batches: int = 0
    log_every: int = 10
    seed: int = 0  # parameter init and dropout
    init_from: str = (
        ""  # fine-tuning: an HF dir or Hub id, or a training workdir, whose params seed a fresh run
    )
    peak_tflops: float = 0.0  # per-device peak for MFU; 0 = the table in perf.py (measured on CPU)
    # a NaN/inf loss or gradient: "stop" (with the last good checkpoint) or "skip" the update
    nan_policy: str = "stop"
    progress: bool = True

    def __post_init__(self):
        family = models.of_config(self.model)
        if self.task is None:
            object.__setattr__(self, "task", tasks.get(family.default_task)())
        _require(
            isinstance(self.task, tuple(tasks.TASKS.values())),
            "task",
            self.task,
            f"is not a task; use one of jaxformers.tasks ({', '.join(sorted(tasks.TASKS))})",
        )
        _require(
            _whole(self.batch_size, 1),
            "batch_size",
            self.batch_size,
            "must be a whole number of at least 1",
        )
        _require(_whole(self.steps, 0), "steps", self.steps, "must be a whole number >= 0")
        _require(_whole(self.tokens, 0), "tokens", self.tokens, "must be a whole number >= 0")
        _require(
            isinstance(self.epochs, (int, float)) and self.epochs >= 0,
            "epochs",
            self.epochs,
            "must be a number >= 0",
        )
        _require(
            bool(self.steps or self.tokens or self.epochs),
            "steps",
            self.steps,
            "leaves the run without a length: give steps=N, tokens=N or epochs=X",
        )
        _require(
            _whole(self.eval_every, 0), "eval_every", self.eval_every, "must be a whole number >= 0"
        )
        _require(
            _whole(self.eval_batches, 0),
            "eval_batches",
            self.eval_batches,
            "must be a whole number >= 0 (0: the whole validation split)",
        )
        _require(
            _whole(self.log_every, 1),
            "log_every",
            self.log_every,
            "must be a whole number of at least 1",
        )
        _require(_whole(self.seed, 0), "seed", self.seed, "must be a whole number >= 0")
        _require(
            self.peak_tflops >= 0,
            "peak_tflops",
            self.peak_tflops,
            "must be >= 0 (0: the device table)",
        )
        _require(
            self.nan_policy in NAN_POLICIES,
            "nan_policy",
            self.nan_policy,
            f"is not one of {NAN_POLICIES}",
        )
        _require(
            self.batch_size % self.optim.grad_accum == 0,
            "batch_size",
            self.batch_size,
            f"must divide into optim.grad_accum={self.optim.grad_accum} microbatches",
        )

    def smoke_test(self, **changes: Any) -> Experiment:
        """The experiment at a two-step size for the tests: batch 8, 2 steps, one eval batch at the
        end, a checkpoint every step; ``changes`` (a smaller model, shorter data ...) on top."""
        small = dict(
            batch_size=8,
            steps=2,
            eval_every=0,
            eval_batches=1,
            log_every=1,
            checkpoint=CheckpointConfig(every=1, keep=2),
        )
        return dataclasses.replace(self, **{**small, **changes})

    def resolve_steps(self, tokens_per_step: int, steps_per_epoch: float) -> Experiment:
        """The experiment with ``steps`` fixed from whichever of steps / tokens / epochs is set
        (rounded up to whole steps); two that disagree are an error naming both.

        Args:
          tokens_per_step: training tokens one step reads (batch_size x tokens per example).
          steps_per_epoch: steps of one pass over the training split (examples / batch_size).
        """
        asked = {}
        if self.steps:
            asked["steps"] = (self.steps, f"steps={self.steps}")
        if self.tokens:
            n = -(-self.tokens // tokens_per_step)
            asked["tokens"] = (n, f"tokens={self.tokens:,} ({tokens_per_step:,} per step)")
        if self.epochs:
            n = max(1, math.ceil(self.epochs * steps_per_epoch))
            asked["epochs"] = (n, f"epochs={self.epochs} ({steps_per_epoch:,.1f} steps each)")
        counts = {n for n, _ in asked.values()}
        if len(counts) > 1:
            raise ValueError(
                "the run's length is given twice and the two disagree: "
                + "; ".join(f"{why} -> {n:,} steps" for n, why in asked.values())
                + ". Set one of them (--set steps=0 leaves the choice to tokens or epochs)"
            )
        return dataclasses.replace(self, steps=counts.pop())

    @property
    def objective(self) -> str:
        """The task's name (``"causal_lm"``, ``"mlm_nsp"``, ...)."""
        return self.task.name


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
            raise ValueError(
                f"--set {key}={value}: expected a {type(current).__name__}, "
                f"got {type(parsed).__name__}"
            )
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
            raise ValueError(
                f"unknown setting {key!r} ({type(cfg).__name__}); valid keys: "
                f"{', '.join(prefix + n for n in names)}"
            )
        current = getattr(cfg, head)
        if isinstance(value, dict):
            if not dataclasses.is_dataclass(current):
                raise ValueError(f"{key} is a plain value, not a group: use --set {key}=...")
            changes[head] = _apply(current, value, key + ".")
        elif key == "task":
            # --set task=NAME picks another task with its default settings.
            changes[head] = tasks.get(value)()
        elif dataclasses.is_dataclass(current):
            fields = [key + "." + f.name for f in dataclasses.fields(current)]
            raise ValueError(
                f"{key} is a group; set one of its fields: {', '.join(fields)}"
                if fields
                else f"{key} is a group without fields to set"
            )
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


def _import_experiment(path: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"experiment file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"jaxformers_experiment_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} has no get_config(); an experiment file must define one")
    return module


def _variants(module) -> dict[str, str]:
    # An experiment declares its variants as VARIANTS = {name: what it is}, the default first.
    return dict(getattr(module, "VARIANTS", None) or {"default": "the experiment as written"})


def experiment_variants(path: str) -> dict[str, str]:
    """The variants an experiment file declares (name -> description), its default first."""
    return _variants(_import_experiment(path))


def load_experiment(
    path: str, variant: str | None = None, settings: list[str] | None = None
) -> Experiment:
    """Imports an experiment file and returns its ``get_config(variant)`` with overrides applied.

    ``variant`` None (or "default") is the first variant the file declares.
    """
    module = _import_experiment(path)
    declared = _variants(module)
    if variant is None or (variant == "default" and "default" not in declared):
        variant = next(iter(declared))
    if variant not in declared:
        raise ValueError(
            f"{os.path.basename(path)} has no variant {variant!r}; it has "
            + ", ".join(declared)
            + " (--list-variants describes them)"
        )
    exp = module.get_config(variant)
    keys = {kv.split("=", 1)[0].strip() for kv in settings or []}
    if keys & {"tokens", "epochs"} and "steps" not in keys:
        # A budget given on the command line replaces the length the experiment file chose.
        settings = ["steps=0", *settings]
    return apply_overrides(exp, settings)
