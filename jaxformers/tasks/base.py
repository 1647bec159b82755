"""What every task shares: the Task protocol, the data object the Trainer reads, the losses.

A task is one frozen dataclass: its fields are the task's settings (``--set task.FIELD=...``),
``build_data`` turns an experiment into batches, and ``normalizers`` / ``loss`` / ``finalize`` are
the loss and metrics of the jitted train and eval steps (the dataclass is hashable, so the
Trainer keeps it as static state). Data settings common to every task (corpus, tokenizer,
sequence length, split, seed) live in ``jaxformers.config.DataConfig``.

The loss protocol:
- ``normalizers(batch)``: totals over the whole step's batch (all microbatches), computed before
  the forward pass, so each microbatch's loss is already divided by the step's total and the sum
  over microbatches is exactly the full-batch mean.
- ``loss(params, apply_fn, batch, rng, deterministic, norms) -> (loss, sums)``: a microbatch's
  share of the loss and its raw sums (for metrics).
- ``finalize(sums) -> metrics``: sums (added over microbatches or eval batches) -> means.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Protocol

import grain
import jax
import jax.numpy as jnp
import numpy as np

from jaxformers import hf, models, storage
from jaxformers.data import sources, streaming, tokenizers
from jaxformers.data.pipeline import ExampleBatches


class Task(Protocol):
    name: ClassVar[str]
    input_keys: ClassVar[tuple[str, ...]]  # the batch features the model takes as positional inputs

    def build_data(self, exp: Any, workdir: str) -> TaskData: ...

    def normalizers(self, batch: dict) -> dict: ...

    def loss(
        self,
        params: Any,
        apply_fn: Callable,
        batch: dict,
        rng: jax.Array,
        deterministic: bool,
        norms: dict,
    ) -> tuple[jax.Array, dict]: ...

    def finalize(self, sums: dict) -> dict: ...

    def random_examples(
        self, rng: np.random.Generator, model_config: Any, n: int, *lengths: int
    ) -> dict: ...


class TaskData:
    """Train and eval batches of a task, and their sizes: what the Trainer reads.

    Args:
      tokenizer: the run's tokenizer (saved in the workdir).
      train, val: batch sources with ``batch(step)`` (``jaxformers.data.pipeline``).
      spec: feature name -> ndim of one microbatch ``[b, ...]`` (for the batch shardings).
      input_lengths: lengths of the model's positional inputs (``model.init`` gets zeros of these).
      tokens_per_example: tokens of one example (throughput).
      flops_args: ``model_config.flops_per_example(*flops_args)`` is one example's training FLOPs.
      num_train_tokens, num_val_tokens: corpus sizes, for the start-of-run summary.

    ``num_train_bytes`` / ``num_val_bytes``: UTF-8 bytes of the text behind the token streams
    (causal LM; None elsewhere): bytes per token, and bits per byte over the validation split.
    """

    num_train_bytes: int | None = None
    num_val_bytes: int | None = None

    def __init__(
        self,
        tokenizer: Any,
        train: Any,
        val: Any,
        spec: dict[str, int],
        input_lengths: tuple[int, ...],
        tokens_per_example: int,
        flops_args: tuple,
        num_train_tokens: int,
        num_val_tokens: int,
    ):
        self.tokenizer, self.train, self.val, self.spec = tokenizer, train, val, spec
        self.input_lengths, self.tokens_per_example, self.flops_args = (
            input_lengths,
            tokens_per_example,
            flops_args,
        )
        self.num_train_tokens, self.num_val_tokens = num_train_tokens, num_val_tokens

    @property
    def seq_len(self) -> int:
        return self.input_lengths[0]

    def dummy_inputs(self) -> tuple:
        return tuple(np.zeros((1, n), np.int32) for n in self.input_lengths)

    @property
    def num_train_examples(self) -> int:
        """Examples (LM windows, BERT instances, T5 rows ...) in one pass over the train split."""
        return len(self.train)

    def steps_per_epoch(self, exp: Any) -> float:
        return self.num_train_examples / exp.batch_size

    def train_spec(self) -> dict[str, int]:
        return dict(self.spec)

    def flops_per_example(self, model_config: Any) -> float:
        return model_config.flops_per_example(*self.flops_args)

    def train_batch(self, step: int) -> dict:
        return self.train.batch(step)

    def eval_batch(self, i: int) -> dict:
        return self.val.batch(i)


def example_data(
    exp: Any,
    tokenizer: Any,
    built: dict,
    spec: dict,
    input_lengths: tuple[int, ...],
    flops_args: tuple,
    transform: Callable | None = None,
) -> TaskData:
    """TaskData over prepared fixed-shape examples (``sources.prepare_examples``' splits).

    ``spec`` is the examples' feature -> (shape, dtype); training batches are shuffled by
    ``data.seed`` (``transform`` may rewrite an example from its global index), eval batches are in
    order; the token counts are of the first input (``input_lengths[0]`` per example).
    """
    pi, pc = jax.process_index(), jax.process_count()
    accum = exp.optim.grad_accum
    train = ExampleBatches(built["train"], exp.batch_size, exp.data.seed, accum, pi, pc, transform)
    val = ExampleBatches(built["validation"], exp.batch_size // accum, None, 1, pi, pc, pad=True)
    T = input_lengths[0]
    return TaskData(
        tokenizer,
        train,
        val,
        {k: len(shape) + 1 for k, (shape, _) in spec.items()},
        input_lengths,
        sum(input_lengths),
        flops_args,
        len(built["train"]) * T,
        len(built["validation"]) * T,
    )


def stream_data(
    exp: Any,
    tokenizer: Any,
    splits: dict,
    spec: dict,
    input_lengths: tuple[int, ...],
    flops_args: tuple,
) -> TaskData:
    """TaskData over examples built while training (``jaxformers.data.streaming``).

    ``splits[name] = (per_doc, num_docs, pack)``: ``per_doc((epoch, doc))`` is a document's list
    of examples, ``pack`` an optional IterDataset transform after them (T5's packing). Training
    reads the documents of this host's data shards (``data.stream_shards``), shuffled per epoch
    (``data.seed``), examples window-shuffled (``data.shuffle_window``), built by
    ``data.worker_count`` workers; evaluation reads every
    validation document once in order. ``spec`` is the examples' feature -> (shape, dtype).
    """
    d, pi, pc = exp.data, jax.process_index(), jax.process_count()
    accum = exp.optim.grad_accum
    shards = d.stream_shards or pc
    if shards % pc:
        raise ValueError(
            f"data.stream_shards={shards} must be a multiple of the {pc} hosts (each draws the "
            f"same number of shards); choose a multiple of {pc}, or 0 for one shard per host"
        )
    per_host = shards // pc

    def make(name, shard=None):
        per_doc, num_docs, pack = splits[name]
        if shard is not None:  # training: this shard's documents, shuffled per epoch
            docs = streaming.visits(num_docs, d.seed, shard, shards).map(per_doc)
            return lambda: streaming.example_stream(
                docs, d.shuffle_window, d.seed, pack, d.worker_count
            )
        docs = streaming.visits(num_docs, None).map(per_doc)
        return lambda: streaming.example_stream(docs, 0, 0, pack, 0)

    per_doc, num_docs, _ = splits["train"]
    estimate = streaming.estimate_examples(per_doc, num_docs)
    makes = [make("train", s) for s in range(pi * per_host, (pi + 1) * per_host)]
    train = streaming.TrainStream(makes, exp.batch_size, accum, pi, pc, estimate, d.worker_count)
    val = streaming.EvalStream(make("validation"), exp.batch_size // accum, pi, pc)
    T = input_lengths[0]
    _, val_docs, _ = splits["validation"]
    return TaskData(
        tokenizer,
        train,
        val,
        {k: len(shape) + 1 for k, (shape, _) in spec.items()},
        input_lengths,
        sum(input_lengths),
        flops_args,
        estimate * T,
        streaming.estimate_examples(splits["validation"][0], val_docs) * T,
    )


def file_stamp(path: str) -> str:
    """A local file's path, size and time, so that data prepared from it is prepared afresh when
    it changes; '' for anything else (a catalog name, a built-in source)."""
    if not path or not os.path.isfile(path):
        return ""
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{int(st.st_mtime)}"


def kept_counts(path: str, counts: dict, unknown: dict) -> dict:
    """Counts made while preparing a dataset (examples cut, skipped ...): ``counts`` when it was
    just prepared (then kept in ``path``, a JSON file beside the data), else the ones kept when
    it was prepared; ``{"train": unknown, "validation": unknown}`` when none were kept."""
    if counts:
        storage.makedirs(os.path.dirname(path))
        storage.write_text(path, json.dumps(counts))
        return counts
    if storage.isfile(path):
        return json.loads(storage.read_text(path))
    return {"train": dict(unknown), "validation": dict(unknown)}


def bert_forward(apply_fn, params, batch: dict, rng, deterministic: bool):
    """A BERT head model on a batch of ``input_ids``, ``segment_ids``, ``input_mask`` (the fine-
    tuning tasks' features): its output record."""
    return apply_fn(
        {"params": params},
        batch["input_ids"],
        token_type_ids=batch["segment_ids"],
        attention_mask=batch["input_mask"],
        deterministic=deterministic,
        rngs={"dropout": rng},
    )


def random_bert_inputs(rng, vocab_size: int, n: int, T: int) -> dict[str, np.ndarray]:
    """``n`` random rows of the BERT fine-tuning features (``random_examples``' inputs)."""
    return {
        "input_ids": rng.integers(0, vocab_size, (n, T), dtype=np.int32),
        "input_mask": np.ones((n, T), np.int32),
        "segment_ids": np.zeros((n, T), np.int32),
    }


def check_seq_len(exp: Any) -> None:
    """``data.seq_len`` must fit the model's positions."""
    limit = models.of_config(exp.model).max_positions(exp.model)
    if exp.data.seq_len > limit:
        raise ValueError(
            f"data.seq_len={exp.data.seq_len} is longer than the model's {limit} positions; "
            "lower data.seq_len or raise the model's position count"
        )


def pretrained_tokenizer(init_from: str) -> str:
    """Where the tokenizer of ``init_from`` (a workdir, an HF directory or Hub id) lives."""
    src = init_from if storage.is_url(init_from) else hf.resolve(init_from)
    tok_dir = storage.join(src, "tokenizer")  # a workdir keeps it apart; an HF dir holds it
    return tok_dir if storage.isdir(tok_dir) else src


def tokenizer_for(exp: Any, workdir: str, texts: Callable[[], Iterable[str]]):
    """The run's tokenizer (the model family's kind): loaded from ``workdir/tokenizer`` on resume,
    else trained on ``texts()`` or read from ``data.tokenizer`` (with ``init_from`` and
    ``data.tokenizer`` "train" or the kind's name: the pretrained model's own); never larger than
    the model."""
    d, vocab = exp.data, exp.model.vocab_size
    kind = models.of_config(exp.model).tokenizer
    setting = d.tokenizer
    if exp.init_from and setting in ("train", kind):
        # A warm start keeps the vocabulary its embeddings were trained with, never a new one.
        setting = pretrained_tokenizer(exp.init_from)
    tok = tokenizers.load_or_train(
        kind,
        setting,
        os.path.join(workdir, "tokenizer"),
        texts,
        d.vocab_size or vocab,
        d.lowercase,
    )
    if tok.vocab_size > vocab:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} tokens but the model's vocab_size is {vocab}; "
            f"token ids would run past the embedding: set model.vocab_size >= {tok.vocab_size} "
            f"or data.vocab_size <= {vocab}"
        )
    return tok


def source_texts(source, max_bytes: int = 0) -> Callable[[], Iterable[str]]:
    """The texts of a TFDS data source, as ``tokenizer_for`` wants them: all of them, or with
    ``max_bytes`` a fixed sample of about that many UTF-8 bytes (``sample_documents``)."""
    if not max_bytes:
        return lambda: (sources.record_text(source[i]) for i in range(len(source)))
    return lambda: sample_texts(source, max_bytes)


def sample_texts(source, max_bytes: int, seed: int = 0) -> Iterable[str]:
    """A deterministic sample of a corpus's documents for tokenizer training, as T5 trained its
    SentencePiece model on a sample of C4: documents in a fixed pseudo-random order until
    ``max_bytes`` UTF-8 bytes (the last one cut), then given in corpus order. A corpus smaller
    than ``max_bytes`` is read whole, in order. Memory: the sample, never the corpus."""
    order = grain.MapDataset.range(len(source)).shuffle(seed=seed)
    picked, left = {}, max_bytes
    for k in range(len(order)):
        if left <= 0:
            break
        i = int(order[k])
        data = sources.record_text(source[i]).encode("utf-8")
        if len(data) > left:
            data = data[:left]
        picked[i] = data.decode("utf-8", errors="ignore")
        left -= len(data)
    for i in sorted(picked):
        yield picked.pop(i)


# ---------------------------------------------------------------------------------------------
# Losses (float32 softmax; sums, so that microbatches and eval batches add up exactly)


def log_normalizer(logits, targets):
    """(log Z, the target's logit, whether the target is the top prediction) per position.

    ``logits`` [..., V] float32, ``targets`` [...] int. One max over the vocabulary serves both
    the logsumexp and the accuracy: a target counts as correct when its logit is the largest (as
    argmax, except that a tie for the maximum counts as correct). On the CPU an argmax over
    [1024, 50257] logits costs 113 ms of a 5.5 s GPT-2 124M train step; the shared max costs
    ~nothing.
    """
    m = jnp.max(logits, axis=-1)
    shift = jax.lax.stop_gradient(m)
    logz = shift + jnp.log(jnp.sum(jnp.exp(logits - shift[..., None]), axis=-1))
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return logz, target_logit, (target_logit >= m).astype(jnp.float32)


def token_cross_entropy(logits, targets, weights):
    """Sums of the weighted NLL and of correct top-1 predictions; softmax in float32.

    Args:
      logits: [B, T, V] any float dtype.
      targets: [B, T] int.
      weights: [B, T] float (0 = ignore).
    """
    logz, target_logit, correct = log_normalizer(logits.astype(jnp.float32), targets)
    return jnp.sum((logz - target_logit) * weights), jnp.sum(correct * weights)


def class_cross_entropy(logits, labels, weights=None):
    """Weighted sums of the NLL and of correct argmax predictions of one label per example.

    Args:
      logits: [B, C] any float dtype.
      labels: [B] int.
      weights: [B] float, default all ones.
    """
    logits = logits.astype(jnp.float32)
    w = jnp.ones(labels.shape, jnp.float32) if weights is None else weights
    nll = jnp.sum(
        w * (jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, labels[:, None], -1)[:, 0])
    )
    correct = jnp.sum(w * (jnp.argmax(logits, -1) == labels).astype(jnp.float32))
    return nll, correct


def real_rows(batch: dict) -> jax.Array:
    """[B] float: 1 for real examples, 0 for the all-zero rows that pad the last evaluation
    batch (``ExampleBatches(pad=True)``); a real BERT example always attends to its [CLS]."""
    return (batch["input_mask"][:, 0] > 0).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Random batches of a task's layout (benchmarks, sharding tests): the shapes without a corpus


class FixedBatches:
    """The same ``[1, b, ...]`` batch at every step (one accumulation microbatch)."""

    num_batches = 1  # as an evaluation split: one batch

    def __init__(self, examples: dict[str, np.ndarray]):
        self.examples = {k: v[None] for k, v in examples.items()}

    def __len__(self) -> int:
        return len(next(iter(self.examples.values()))[0])

    def batch(self, step: int) -> dict[str, np.ndarray]:
        return self.examples


def synthetic_data(
    task: Any, model_config: Any, batch_size: int, lengths: tuple[int, ...], seed: int = 0
) -> TaskData:
    """A TaskData whose every train and eval batch is one random batch of ``task``'s layout.

    ``lengths`` are the task's ``flops_args``: (T,) causal LM; (T, P) masked LM with P predictions
    (classification: (T, 0)); (T, S) span corruption.
    """
    rng = np.random.default_rng(seed)
    ex = task.random_examples(rng, model_config, batch_size, *lengths)
    spec = {k: v.ndim for k, v in ex.items()}
    input_lengths = tuple(ex[k].shape[1] for k in task.input_keys)
    tokens = sum(input_lengths)
    return TaskData(
        None,
        FixedBatches(ex),
        FixedBatches(ex),
        spec,
        input_lengths,
        tokens,
        tuple(lengths),
        batch_size * tokens,
        batch_size * tokens,
    )
