"""Evaluation of causal language models (GPT-2): perplexity and bits per byte of a token stream
with a sliding window, and LAMBADA last-word accuracy. What ``jaxformers eval`` prints.

Sliding window (``nll``), as transformers' guide "Perplexity of fixed-length models", over the
``n - 1`` (input, next token) pairs of ``n`` tokens: window starts ``begin = 0, stride, 2 stride,
...``, ``end = min(begin + context, n - 1)``; the window's inputs are ``ids[begin:end]`` and it
scores only the ``end - prev_end`` newest of its targets ``ids[begin + 1:end + 1]``; the earlier
positions are context only. The first token is never scored and every other token exactly once,
so ``tokens == n - 1`` for every stride, ``stride == context`` (disjoint windows) included. (The
guide's own loop labels the window's first token, which the label shift cannot predict, so with
disjoint windows it leaves one token per window unscored; with ``stride < context`` the two score
the same tokens, here each with one more token of context.)

The forward runs jitted over fixed-shape ``[batch, context]`` blocks: several windows per call, the
last window padded on the right (a causal model's earlier positions do not see it) and the last
block filled with empty windows, so it compiles once per (batch, context).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers import models
from jaxformers.tasks.base import log_normalizer


def check_causal(model, what: str = "eval") -> int:
    """The model's number of positions, or an error naming its family when it is not causal."""
    family = models.of_model(model)
    if family.decoder != "causal":
        raise ValueError(
            f"{what} needs a causal language model (GPT-2); this is a {family.name} model, "
            f"which does not predict the next token of a text: give a GPT-2 workdir or Hugging "
            f"Face directory"
        )
    return family.max_positions(model.config)


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, new)`` for each window over ``n`` tokens: inputs ``ids[begin:end]``, targets
    ``ids[begin + 1:end + 1]``, of which the last ``new`` are scored (module docstring)."""
    if n < 2:
        raise ValueError(
            f"the text has {n} token{'s' * (n != 1)}; perplexity needs at least 2 (the first "
            "token is never scored): give a longer text"
        )
    if context < 1:
        raise ValueError(f"--context {context}: the window needs at least 1 token")
    if not 1 <= stride <= context:
        raise ValueError(
            f"--stride {stride} must be between 1 and the context ({context}): a larger stride "
            "would skip tokens; --stride equal to the context gives disjoint windows"
        )
    out, prev_end = [], 0
    for begin in range(0, n - 1, stride):
        end = min(begin + context, n - 1)
        out.append((begin, end, end - prev_end))
        prev_end = end
        if end == n - 1:
            break
    return out


@dataclasses.dataclass(frozen=True)
class Perplexity:
    nll_sum: float  # nats, summed over the scored tokens
    tokens: int  # scored tokens (n - 1)
    bytes: int  # UTF-8 bytes of the text (0 when unknown)

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll_sum / self.tokens)

    @property
    def bits_per_byte(self) -> float | None:
        return self.nll_sum / math.log(2) / self.bytes if self.bytes else None

    def as_dict(self) -> dict:
        return {
            "nll_sum": self.nll_sum,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
        }


def _blocks(rows: list, batch: int) -> Iterable[list]:
    for i in range(0, len(rows), batch):
        yield rows[i : i + batch]


def nll(
    model,
    params,
    ids: Sequence[int],
    context: int | None = None,
    stride: int | None = None,
    batch_size: int = 8,
) -> tuple[float, int]:
    """(summed NLL in nats, scored tokens) of the token stream ``ids`` (module docstring).

    ``context`` defaults to the model's positions, ``stride`` to ``context`` (disjoint windows).
    """
    limit = check_causal(model)
    context = limit if context is None else context
    if context > limit:
        raise ValueError(
            f"--context {context} is longer than the model's {limit} positions; give "
            f"--context {limit} or less"
        )
    stride = context if stride is None else stride
    ids = np.asarray(ids, np.int32)
    wins = windows(len(ids), context, stride)
    batch = max(1, min(batch_size, len(wins)))
    fn = _target_fn(model)
    total, count = 0.0, 0
    for block in _blocks(wins, batch):
        inputs = np.zeros((batch, context), np.int32)
        targets = np.zeros((batch, context), np.int32)
        weights = np.zeros((batch, context), np.float64)
        for r, (begin, end, new) in enumerate(block):
            inputs[r, : end - begin] = ids[begin:end]
            targets[r, : end - begin] = ids[begin + 1 : end + 1]
            weights[r, end - begin - new : end - begin] = 1.0
        out = np.asarray(fn(params, inputs, targets)[0], np.float64)
        total += float((out * weights).sum())
        count += int(weights.sum())
    assert count == len(ids) - 1, (count, len(ids))
    return total, count


def perplexity(
    model, params, tokenizer, texts: Sequence[str], documents: bool | None = None, **kw
) -> Perplexity:
    """``nll`` of ``texts`` as one token stream. ``documents`` (a TFDS split; default: more than
    one text): each text is encoded and followed by the end-of-text token, as the training data
    packs them, so that a split scores as the training run's own evaluation does; otherwise the
    single text (a file) is encoded whole. ``bytes`` counts the texts' UTF-8 bytes (not the
    separators)."""
    if documents is None:
        documents = len(texts) > 1
    if not documents:
        if len(texts) != 1:
            raise ValueError(f"{len(texts)} texts given as one text; pass documents=True")
        ids = tokenizer.encode(texts[0])
    else:
        ids = [t for text in texts for t in [*tokenizer.encode(text), tokenizer.eos_id]]
    total, count = nll(model, params, ids, **kw)
    return Perplexity(total, count, sum(len(t.encode("utf-8")) for t in texts))


def lambada_split(passage: str) -> tuple[str, str]:
    """(context, target): the passage up to its last space, and " " + its last word (as GPT-2's
    LAMBADA evaluation)."""
    passage = passage.strip()
    cut = passage.rfind(" ")
    if cut <= 0:
        raise ValueError(f"the LAMBADA passage {passage[:60]!r} has no space before a last word")
    return passage[:cut], passage[cut:]


def lambada(model, params, tokenizer, passages: Sequence[str], batch_size: int = 8) -> dict:
    """LAMBADA: the share of passages whose last word the model predicts exactly, greedily.

    The context (up to the last space) and the target (" " + last word) are encoded separately;
    the target may be several tokens. Checked teacher-forced: one forward over context + target
    (without its last token), correct when the argmax at every target position is the target
    token. That equals greedy decoding of ``len(target)`` tokens: if every teacher-forced argmax
    matches, greedy decoding produces exactly the teacher's prefixes and so the same tokens; at the
    first position where it does not match, greedy decoding (same prefix so far) emits that wrong
    token too. A context longer than the model's positions keeps its last tokens.

    Returns ``{"lambada_accuracy", "examples", "lambada_perplexity"}``; the perplexity is per word,
    ``exp`` of the mean over passages of the target's summed NLL (as lm-evaluation-harness).
    """
    limit = check_causal(model, "LAMBADA")
    if not passages:
        raise ValueError("no LAMBADA passages: the file or split is empty")
    rows = []
    for p in passages:
        ctx, target = lambada_split(p)
        c, t = tokenizer.encode(ctx), tokenizer.encode(target)
        if not c or not t:
            raise ValueError(f"the LAMBADA passage {p[:60]!r} encodes to no context or no target")
        seq = (c + t)[-(limit + 1) :]
        rows.append((seq, len(t)))
    length = max(len(s) - 1 for s, _ in rows)
    batch = max(1, min(batch_size, len(rows)))
    fn = _target_fn(model)
    correct, word_nll = 0, []
    for block in _blocks(rows, batch):
        inputs = np.zeros((batch, length), np.int32)
        targets = np.zeros((batch, length), np.int32)
        weights = np.zeros((batch, length), bool)
        for r, (seq, k) in enumerate(block):
            inputs[r, : len(seq) - 1] = seq[:-1]
            targets[r, : len(seq) - 1] = seq[1:]
            weights[r, len(seq) - 1 - k : len(seq) - 1] = True
        token_nll, hit = (np.asarray(x) for x in fn(params, inputs, targets))
        for r in range(len(block)):
            w = weights[r]
            correct += bool(hit[r][w].all())
            word_nll.append(float(token_nll[r][w].astype(np.float64).sum()))
    return {
        "lambada_accuracy": correct / len(rows),
        "examples": len(rows),
        "lambada_perplexity": math.exp(float(np.mean(word_nll))),
    }


def read_text(path: str) -> str:
    """A text file, whole (UTF-8)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text file {path} does not exist; give --text FILE (UTF-8 text)")
    with open(path, encoding="utf-8") as f:
        return f.read()


def read_passages(path: str, field: str = "text") -> list[str]:
    """LAMBADA passages from a local file: JSONL with a ``field`` per line (a ``.jsonl`` file, or
    one whose first line is a JSON object), else plain text, one passage per line. Blank lines are
    skipped."""
    lines = [(i, line) for i, line in enumerate(read_text(path).splitlines(), 1) if line.strip()]
    if not (path.endswith(".jsonl") or (lines and lines[0][1].lstrip().startswith("{"))):
        return [line for _, line in lines]
    out = []
    for i, line in lines:
        try:
            out.append(record_field(json.loads(line), field))
        except (json.JSONDecodeError, ValueError) as e:
            raise ValueError(f"{path} line {i}: {e}") from None
    return out


def record_field(record, field: str) -> str:
    """The string ``record[field]`` (a JSON object or a TFDS example), or an error naming the
    fields it has."""
    if not isinstance(record, dict) or field not in record:
        have = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"no field {field!r} (it has {have}); name the field with --field")
    value = record[field]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def tfds_texts(spec: str, field: str = "text", data_dir: str | None = None) -> list[str]:
    """The ``field`` of every example of a prepared TFDS split, ``NAME[:SPLIT]`` (default split:
    validation, else test)."""
    from jaxformers.data import sources

    src = sources.catalog_split(spec, data_dir, None, f"tfds:{spec}")
    return [record_field(src[i], field) for i in range(len(src))]


def _target_fn(model):
    """jitted (params, inputs, targets) -> (NLL of each target, argmax == target), [B, T]."""

    def fn(params, inputs, targets):
        logits = model.apply({"params": params}, inputs).astype(jnp.float32)
        logz, target_logit, _ = log_normalizer(logits, targets)  # the training loss's NLL
        # argmax, not log_normalizer's tie-tolerant "correct": LAMBADA's hit is greedy's token.
        return logz - target_logit, jnp.argmax(logits, axis=-1) == targets

    return jax.jit(fn)
