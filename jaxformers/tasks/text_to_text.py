"""Text-to-text fine-tuning for T5: (inputs, targets) strings, teacher-forced loss, metrics of
greedy generations over every validation example once.

Sources (``data.corpus``; several joined by ``+`` form a mixture, see below), with the T5 paper's
task prefixes (Raffel et al. 2020, appendix D):

- ``glue/sst2`` (TFDS): ``"sst2 sentence: <sentence>"`` -> ``"negative"`` / ``"positive"``;
  metric: exact match (= accuracy) on the dev set.
- ``squad`` (TFDS, v1.1): ``"question: <question> context: <context>"`` -> the first answer;
  metrics: SQuAD's official exact match and F1 against all the dev answers.
- ``cnn_dailymail`` (TFDS): ``"summarize: <article>"`` -> the highlights; metrics: ROUGE-1/2/Lsum
  (``rouge-score``).
- ``shakespeare_who_speaks`` (offline, the embedded plays): ``"who speaks in <play>: <speech>"``
  -> the speaker's name as the play prints it (``"HAMLET"``); metric: exact match. The validation
  speeches are those in the held-out tail of each play, cut exactly as the causal-LM and
  span-corruption runs cut it (``sources.split_document`` with ``data.val_fraction``), so a model
  pretrained on the embedded corpus has not read them.
- a local ``.tsv`` (``inputs<TAB>targets[<TAB>more references ...]``, no header) or ``.jsonl``
  (``{"inputs": ..., "targets": ..., "references": [...] optional}``) file; its validation split
  is ``data.val_corpus`` when given, else the last ``data.val_fraction`` of its lines. Metric:
  ``task.metric`` (exact_match, squad or rouge).

TFDS sources must be prepared beforehand (TensorFlow and the network); otherwise the run stops
with an error that says how.

Lengths and truncation, as seqio's ``append_eos_after_trim``: inputs and targets get EOS; one
longer than its length (``data.seq_len`` encoder tokens, ``task.targets_length`` decoder tokens)
is cut to length - 1 and ends in EOS. Truncations are counted per split and printed when the data
is built (``TextToTextData.truncated``). ``task.long_targets="error"`` refuses a target that does
not fit instead of cutting it. An empty target is always an error naming the example.

Packing (``task.pack``): training examples are packed greedily, in a seeded order, into rows of
``data.seq_len`` / ``task.targets_length`` with segment ids (T5's relative positions need no
position features; attention never crosses segments). Validation rows are never packed.

Mixtures: ``data.corpus=glue/sst2+squad`` trains on both, each training example drawn by
examples-proportional rates with the cap ``task.mixture_cap`` (``jaxformers.data.mixtures``);
evaluation covers each source's validation split, its metrics prefixed with the source
(``glue/sst2/exact_match``).

The loss is the span-corruption task's: cross-entropy over the non-padding target tokens (z-loss
and label smoothing as there).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import grain
import jax
import numpy as np

from jaxformers import decoding
from jaxformers.data import sources
from jaxformers.data.mixtures import Mixture, proportional_rates
from jaxformers.data.pipeline import ExampleBatches, fingerprint
from jaxformers.tasks import text_metrics
from jaxformers.tasks.base import TaskData, file_stamp, kept_counts, tokenizer_for
from jaxformers.tasks.span_corruption import KEYS, SpanCorruption

# (inputs, targets, references): what every source yields per example.
Example = tuple[str, str, list[str]]

WHO_SPEAKS = "shakespeare_who_speaks"
TFDS_SOURCES = {"glue/sst2": "exact_match", "squad": "squad", "cnn_dailymail": "rouge"}
LOCAL_SUFFIXES = (".tsv", ".jsonl")


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _join(*parts: str) -> str:
    return " ".join(" ".join(p.split()) for p in parts)


# ---------------------------------------------------------------------------------- sources


def _tfds_examples(name: str, record) -> Example | None:
    """One TFDS record -> (inputs, targets, references) with the T5 paper's prefix."""
    if name == "glue/sst2":
        label = int(record["label"])
        if label < 0:  # the unlabelled test split
            return None
        target = ("negative", "positive")[label]
        return _join("sst2 sentence:", _text(record["sentence"])), target, [target]
    if name == "squad":
        answers = [_text(a) for a in record["answers"]["text"]]
        inputs = _join("question:", _text(record["question"]), "context:", _text(record["context"]))
        return inputs, answers[0] if answers else "", answers
    if name == "cnn_dailymail":
        summary = _text(record["highlights"]).strip()
        return _join("summarize:", _text(record["article"])), summary, [summary]
    raise AssertionError(name)


_SPEECH = re.compile(r"^([A-Z][A-Z0-9 ,.'&-]*[A-Z.]):\n(.+)", re.S)


def who_speaks(val_fraction: float) -> dict[str, list[Example]]:
    """``"who speaks in <play>: <speech>"`` -> the speaker, from every play (named by its file:
    ``"romeo and juliet"``); validation = the speeches of each play's held-out tail
    (``sources.split_document``)."""
    out: dict[str, list[Example]] = {"train": [], "validation": []}
    for path in sources.shakespeare_files():
        with open(path, encoding="utf-8") as f:
            text = sources.play_markdown_to_text(f.read())
        play = os.path.basename(path)[: -len(".md")].replace("-", " ")
        parts = sources.split_document(text, val_fraction)
        for split, part in zip(("train", "validation"), parts):
            for block in re.split(r"\n\s*\n", part):
                m = _SPEECH.match(block.strip())
                if m and m.group(2).strip():
                    speaker = m.group(1).strip()
                    inputs = _join(f"who speaks in {play}:", m.group(2))
                    out[split].append((inputs, speaker, [speaker]))
    return out


def read_local(path: str) -> list[Example]:
    """A local .tsv or .jsonl file of (inputs, targets[, references]) -> examples."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text-to-text file {path} does not exist")
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            if path.endswith(".jsonl"):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not a JSON object ({e})") from None
                if not isinstance(rec, dict) or "inputs" not in rec or "targets" not in rec:
                    raise ValueError(
                        f'{path}:{n}: each line needs {{"inputs": ..., "targets": ...}}'
                    )
                inputs, target = str(rec["inputs"]), str(rec["targets"])
                refs = [str(r) for r in rec.get("references") or [target]]
            else:
                cols = line.rstrip("\n").split("\t")
                if len(cols) < 2:
                    raise ValueError(
                        f"{path}:{n}: expected inputs<TAB>targets, found no tab; a TSV line "
                        "holds the input, then the target (then any further references)"
                    )
                inputs, target, refs = cols[0], cols[1], cols[1:]
            out.append((inputs, target, refs))
    if not out:
        raise ValueError(f"text-to-text file {path} holds no examples")
    return out


def source_kind(name: str) -> str:
    """``"tfds"``, ``"plays"`` or ``"local"``; an unknown name is an error listing the choices."""
    bare = name[len("tfds:") :] if name.startswith("tfds:") else name
    if bare in TFDS_SOURCES:
        return "tfds"
    if bare == WHO_SPEAKS:
        return "plays"
    if name.endswith(LOCAL_SUFFIXES):
        return "local"
    raise ValueError(
        f"text-to-text source {name!r} does not exist; choose one of "
        f"{', '.join([*TFDS_SOURCES, WHO_SPEAKS])} or a local .tsv/.jsonl file "
        "(several joined by '+' form a mixture)"
    )


def source_metric(name: str, local_metric: str) -> str:
    kind = source_kind(name)
    if kind == "tfds":
        return TFDS_SOURCES[name.removeprefix("tfds:")]
    return "exact_match" if kind == "plays" else local_metric


def read_source(name: str, data_config, data_dir: str) -> dict[str, Callable[[], Iterator]]:
    """split -> function yielding the split's (inputs, targets, references)."""
    kind, d = source_kind(name), data_config
    if kind == "plays":
        examples = who_speaks(d.val_fraction)
        return {s: (lambda v=v: iter(v)) for s, v in examples.items()}
    if kind == "local":
        rows = read_local(name)
        if d.val_corpus:
            val = read_local(d.val_corpus)
        else:
            if not 0 < d.val_fraction < 1:
                raise ValueError(
                    f"data.val_fraction={d.val_fraction} leaves {name} no validation examples; "
                    "give a share in (0, 1) or data.val_corpus=FILE"
                )
            cut = int(len(rows) * (1 - d.val_fraction))
            rows, val = rows[:cut], rows[cut:]
            if not val or not rows:
                raise ValueError(
                    f"{name} has {len(rows) + len(val)} examples, too few to hold out "
                    f"data.val_fraction={d.val_fraction} of them; add examples or give "
                    "data.val_corpus=FILE"
                )
        return {"train": lambda: iter(rows), "validation": lambda: iter(val)}
    bare = name.removeprefix("tfds:")
    srcs = sources.catalog_source(bare, data_dir)
    if srcs["validation"] is None:
        raise ValueError(f"TFDS dataset {bare!r} has no validation or test split")

    def read(split):
        src = srcs[split]
        return lambda: (ex for i in range(len(src)) if (ex := _tfds_examples(bare, src[i])))

    return {"train": read("train"), "validation": read("validation")}


# ---------------------------------------------------------------------------------- encoding


def fit(ids: list[int], length: int, eos: int) -> tuple[list[int], bool]:
    """``ids`` + EOS, cut to ``length`` as seqio's ``append_eos_after_trim`` (the EOS stays);
    returns (tokens, whether it was truncated)."""
    if len(ids) + 1 > length:
        return ids[: length - 1] + [eos], True
    return ids + [eos], False


def make_row(
    pairs: list[tuple[list[int], list[int]]], T: int, S: int, start: int, example_id: int = -1
) -> dict:
    """Packed (or single) examples -> one fixed-size row of ``span_corruption.KEYS`` and
    ``example_id`` (the example's index in its split; -1 for packed rows)."""
    row = {
        "example_id": np.int32(example_id),
        "encoder_input_tokens": np.zeros(T, np.int32),
        "encoder_segment_ids": np.zeros(T, np.int32),
        "decoder_target_tokens": np.zeros(S, np.int32),
        "decoder_input_tokens": np.zeros(S, np.int32),
        "decoder_segment_ids": np.zeros(S, np.int32),
        "decoder_loss_weights": np.zeros(S, np.float32),
    }
    t = s = 0
    for seg, (inp, tgt) in enumerate(pairs, 1):
        row["encoder_input_tokens"][t : t + len(inp)] = inp
        row["encoder_segment_ids"][t : t + len(inp)] = seg
        row["decoder_target_tokens"][s : s + len(tgt)] = tgt
        row["decoder_input_tokens"][s : s + len(tgt)] = [start] + tgt[:-1]
        row["decoder_segment_ids"][s : s + len(tgt)] = seg
        row["decoder_loss_weights"][s : s + len(tgt)] = 1.0
        t, s = t + len(inp), s + len(tgt)
    return row


def pack(pairs: list[tuple[list[int], list[int]]], T: int, S: int) -> list[list]:
    """Greedy next-fit packing: consecutive examples share a row while both their inputs and
    targets fit; returns the groups of examples, one per row."""
    rows, cur, t, s = [], [], 0, 0
    for inp, tgt in pairs:
        if cur and (t + len(inp) > T or s + len(tgt) > S):
            rows.append(cur)
            cur, t, s = [], 0, 0
        cur.append((inp, tgt))
        t, s = t + len(inp), s + len(tgt)
    if cur:
        rows.append(cur)
    return rows


# ---------------------------------------------------------------------------------- the task


LONG_TARGETS = ("truncate", "error")


@dataclasses.dataclass(frozen=True)
class TextToText:
    """Sequence-to-sequence fine-tuning on (inputs, targets) text (module docstring).

    Attributes:
      targets_length: decoder row length (EOS included); also the most tokens generated.
      long_targets: "truncate" (seqio: cut, keep EOS, counted) or "error" for a target longer
        than ``targets_length``.
      pack: pack training examples into rows (validation rows are never packed).
      metric: the metric of local .tsv/.jsonl sources: exact_match, squad or rouge (TFDS and
        plays sources have their own).
      mixture_cap: K of examples-proportional mixing (0: no cap); used when ``data.corpus``
        names several sources.
      z_loss, label_smoothing: as ``SpanCorruption``.
    """

    targets_length: int = 64
    long_targets: str = "truncate"
    pack: bool = False
    metric: str = "exact_match"
    mixture_cap: int = 0
    z_loss: float = 0.0
    label_smoothing: float = 0.0

    name: ClassVar[str] = "text_to_text"
    input_keys: ClassVar[tuple[str, ...]] = ("encoder_input_tokens", "decoder_input_tokens")

    def __post_init__(self):
        if self.targets_length < 2:
            raise ValueError(
                f"task.targets_length={self.targets_length} must be >= 2 (a token and EOS)"
            )
        if self.long_targets not in LONG_TARGETS:
            raise ValueError(
                f"task.long_targets={self.long_targets!r}: choose truncate (cut and count, as "
                "seqio) or error"
            )
        if self.metric not in text_metrics.METRICS:
            raise ValueError(
                f"task.metric={self.metric!r}: choose one of {', '.join(text_metrics.METRICS)}"
            )
        if self.mixture_cap < 0:
            raise ValueError(f"task.mixture_cap={self.mixture_cap} must be >= 0 (0: no cap)")
        if self.z_loss < 0:
            raise ValueError(f"task.z_loss={self.z_loss} must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"task.label_smoothing={self.label_smoothing} must lie in [0, 1)")

    # The loss, its normalisers and metrics are span corruption's: both are T5 cross-entropy
    # over the non-padding target tokens of rows with the same features.
    normalizers = SpanCorruption.normalizers
    loss = SpanCorruption.loss
    finalize = SpanCorruption.finalize
    random_examples = SpanCorruption.random_examples

    def build_data(self, exp: Any, workdir: str) -> TextToTextData:
        d = exp.data
        T, S = d.seq_len, self.targets_length
        limit = exp.model.n_positions
        if max(T, S) > limit:
            raise ValueError(
                f"data.seq_len={T} / task.targets_length={S} exceed the model's "
                f"n_positions={limit}; lower them or raise model.n_positions"
            )
        names = [n.strip() for n in d.corpus.split("+")]
        for n in names:
            source_kind(n)  # unknown names fail before any work
        data_dir = sources.data_dir_for(d, workdir)
        read = {n: read_source(n, d, data_dir) for n in names}
        tok = tokenizer_for(  # with init_from: the pretrained model's own vocabulary
            exp,
            workdir,
            lambda: (t for n in names for ex in read[n]["train"]() for t in ex[:2]),
        )
        with open(os.path.join(workdir, "tokenizer", "spiece.model"), "rb") as f:
            sp_hash = fingerprint(f.read().hex())
        start = exp.model.decoder_start_token_id
        spec = {
            k: (
                (S if k.startswith("decoder") else T,),
                np.float32 if k == "decoder_loss_weights" else np.int32,
            )
            for k in KEYS
        }
        # TFDS stores examples in its own order: each row says which example it holds.
        spec["example_id"] = ((), np.int32)
        train, val, refs, truncated = [], [], {}, {}
        for n in names:
            key = [
                n,
                source_stamp(n),
                d.val_fraction,
                d.val_corpus,
                source_stamp(d.val_corpus),
                T,
                S,
            ]
            key += [self.pack, self.long_targets, d.seed]
            name = "t2t_" + fingerprint([*key, sp_hash, sorted(spec)])
            counts: dict = {}

            def gen(split, n=n, counts=counts):
                def run():
                    c = counts.setdefault(split, dict(examples=0, inputs=0, targets=0, rows=0))
                    pairs = []
                    for i, (inputs, target, _) in enumerate(read[n][split]()):
                        pairs.append(self._encode(tok, inputs, target, T, S, n, split, i, c))
                    if self.pack and split == "train":
                        order = np.random.default_rng(d.seed).permutation(len(pairs))
                        groups = pack([pairs[k] for k in order], T, S)
                        c["rows"] = len(groups)
                        for g in groups:
                            yield make_row(g, T, S, start)
                    else:
                        c["rows"] = len(pairs)
                        for k, p in enumerate(pairs):
                            yield make_row([p], T, S, start, k)

                return run

            built = sources.prepare_examples(
                name, {s: gen(s) for s in ("train", "validation")}, spec, data_dir
            )
            truncated[n] = kept_counts(
                os.path.join(data_dir, "t2t_counts", name + ".json"), counts, UNKNOWN_COUNTS
            )
            train.append(built["train"])
            val.append(built["validation"])
            refs[n] = [ex[2] for ex in read[n]["validation"]()]
        for n in names:
            c = truncated[n]
            print(
                f"text-to-text {n}: "
                + "; ".join(
                    f"{s} {c[s]['examples']:,} examples in {c[s]['rows']:,} rows, "
                    f"{c[s]['inputs']:,} inputs and {c[s]['targets']:,} targets truncated"
                    for s in ("train", "validation")
                ),
                flush=True,
            )
        return TextToTextData(self, exp, tok, names, train, val, refs, truncated, spec, (T, S))

    def _encode(self, tok, inputs, target, T, S, source, split, i, counts):
        if not target.strip():
            raise ValueError(
                f"{source} {split} example {i} has an empty target (input: {inputs[:80]!r}); "
                "every example needs a target string: fix or drop it"
            )
        inp, cut_in = fit(tok.encode(inputs), T, tok.eos_id)
        tgt_ids = tok.encode(target)
        if len(tgt_ids) + 1 > S and self.long_targets == "error":
            raise ValueError(
                f"{source} {split} example {i}: its target is {len(tgt_ids) + 1} tokens with "
                f"EOS, longer than task.targets_length={S} (target: {target[:80]!r}); raise "
                "task.targets_length or set task.long_targets=truncate to cut and count such "
                "targets"
            )
        tgt, cut_t = fit(tgt_ids, S, tok.eos_id)
        counts["examples"] += 1
        counts["inputs"] += cut_in
        counts["targets"] += cut_t
        return inp, tgt


# Bumped when a built-in source's examples change, so that prepared data is not reused.
SOURCE_VERSIONS = {WHO_SPEAKS: "2: the play named"}


UNKNOWN_COUNTS = dict(examples=-1, inputs=-1, targets=-1, rows=-1)


def source_stamp(path: str) -> str:
    """A built-in source's version, else a local file's stamp (``file_stamp``)."""
    return SOURCE_VERSIONS.get(path) or file_stamp(path)


class MixtureBatches(ExampleBatches):
    """``ExampleBatches`` whose global example ``i`` is slot ``i`` of a ``Mixture``."""

    def __init__(self, mixture: Mixture, *args, **kwargs):
        super().__init__(mixture, *args, seed=None, **kwargs)

    def example(self, i: int) -> dict:
        return self.source[int(i)]


class TextToTextData(TaskData):
    """Batches of a text-to-text run, and the generation metrics over its validation split.

    Attributes:
      names: the sources (several: a mixture).
      references: source -> the reference strings of each validation example, in order.
      truncated: source -> split -> counts of examples, rows, truncated inputs and targets.
      rates: the mixture's sampling rates (one source: [1.0]).
    """

    def __init__(self, task, exp, tok, names, train, val, refs, truncated, spec, lengths):
        pi, pc = jax.process_index(), jax.process_count()
        accum = exp.optim.grad_accum
        T, S = lengths
        self.task, self.names, self.references, self.truncated = task, names, refs, truncated
        if len(train) == 1:
            self.rates = np.ones(1)
            batches = ExampleBatches(train[0], exp.batch_size, exp.data.seed, accum, pi, pc)
        else:
            self.rates = proportional_rates([len(t) for t in train], task.mixture_cap)
            mixture = Mixture(train, self.rates, exp.data.seed)
            batches = MixtureBatches(mixture, exp.batch_size, accum=accum, process_index=pi,
                                     process_count=pc)  # fmt: skip
        val_all = grain.MapDataset.concatenate([grain.MapDataset.source(v) for v in val])
        self.val_rows = val_all
        self.val_sizes = [len(v) for v in val]
        eval_batches = ExampleBatches(val_all, exp.batch_size // accum, None, 1, pi, pc, pad=True)
        super().__init__(
            tok,
            batches,
            eval_batches,
            {k: len(shape) + 1 for k, (shape, _) in spec.items()},
            (T, S),
            T + S,
            (T, S),
            sum(len(t) for t in train) * T,
            len(val_all) * T,
        )
        self.eval_batch_size = exp.batch_size // accum

    def generate_all(self, model, params, n: int | None = None) -> list[tuple[int, str]]:
        """(example id, greedy generation) for the first ``n`` validation rows (all by default),
        in the evaluation's order; the same on every process (each decodes the whole list)."""
        n = len(self.val_rows) if n is None else min(n, len(self.val_rows))
        b, S, tok = self.eval_batch_size, self.input_lengths[1], self.tokenizer
        out = []
        for lo in range(0, n, b):
            rows = [self.val_rows[k] for k in range(lo, min(lo + b, n))]
            ids = np.stack([r["encoder_input_tokens"] for r in rows])
            mask = np.stack([r["encoder_segment_ids"] for r in rows]) > 0
            if len(rows) < b:  # the last batch: stand-in rows keep one compiled shape
                fill = b - len(rows)
                ids = np.concatenate([ids, np.full((fill, ids.shape[1]), tok.eos_id, ids.dtype)])
                mask = np.concatenate([mask, np.ones((fill, mask.shape[1]), bool)])
            tokens = decoding.generate(
                model,
                params,
                ids,
                max_new_tokens=S,
                method="greedy",
                eos_token_id=tok.eos_id,
                pad_token_id=tok.pad_id,
                attention_mask=mask.astype(np.int32),
            )
            tokens = np.asarray(jax.device_get(tokens))
            out += [(int(r["example_id"]), tok.decode(t.tolist())) for r, t in zip(rows, tokens)]
        return out

    def decode_metrics(self, model, params, num_batches: int) -> dict:
        """Generation metrics (percent) over the examples of the first ``num_batches``
        evaluation batches (the whole split when it is all of them), each example once."""
        n = min(len(self.val_rows), num_batches * self.eval_batch_size)
        preds = self.generate_all(model, params, n)
        metrics: dict = {"generated": float(n)}
        lo = 0
        for name, size in zip(self.names, self.val_sizes):
            k = min(size, n - lo)
            if k <= 0:
                break
            ids = [i for i, _ in preds[lo : lo + k]]
            if len(set(ids)) != k or not all(0 <= i < size for i in ids):
                raise ValueError(
                    f"the validation rows of {name} do not hold each example once (ids "
                    f"{sorted(ids)[:8]}...); delete its prepared data to rebuild it"
                )
            refs = [self.references[name][i] for i in ids]
            kind = source_metric(name, self.task.metric)
            scores = text_metrics.score(kind, [p for _, p in preds[lo : lo + k]], refs)
            prefix = f"{name}/" if len(self.names) > 1 else ""
            metrics.update({prefix + m: v for m, v in scores.items()})
            lo += size
        return metrics


# ---------------------------------------------------------------------------------------------
# The T5 paper's fine-tuning recipe, which the text-to-text experiments share


def t5_finetune_experiment(name: str, corpus: str, seq_len: int, targets_length: int):
    """A T5.1.1-base text-to-text fine-tuning run as Raffel et al. 2020 section 3.1.4: Adafactor
    at a constant 1e-3, batch 128 packed rows, dropout 0.1, 2^18 steps, an evaluation of the whole
    dev split every 5,000 (its weights come from ``init_from``)."""
    from jaxformers.config import (
        CheckpointConfig,
        DataConfig,
        Experiment,
        OptimConfig,
        SampleConfig,
    )
    from jaxformers.models.t5 import T5Config

    return Experiment(
        name=name,
        task=TextToText(targets_length=targets_length, pack=True),
        model=T5Config.preset("t5.1.1-base", dropout_rate=0.1),
        data=DataConfig(corpus=corpus, tokenizer="train", seq_len=seq_len),
        optim=OptimConfig(
            name="adafactor",
            lr=1e-3,
            warmup_steps=0,
            schedule="constant",
            weight_decay=0.0,
            clip_norm=0.0,
        ),
        checkpoint=CheckpointConfig(every=5000, keep=3),
        sample=SampleConfig(max_new_tokens=0),
        batch_size=128,
        steps=2**18,
        eval_every=5000,
        eval_batches=0,
        log_every=100,
    )


def who_speaks_smoke_test(exp):
    """``exp`` as a two-step smoke test (the tests run it): a tiny T5.1.1-shaped model on the
    embedded plays' who-speaks task, 8 target tokens."""
    from jaxformers.config import DataConfig
    from jaxformers.models.t5 import T5Config

    return exp.smoke_test(
        model=T5Config.preset(
            "tiny",
            vocab_size=512,
            d_model=32,
            d_kv=8,
            d_ff=48,
            num_heads=2,
            num_layers=1,
            num_decoder_layers=1,
            dropout_rate=0.0,
            n_positions=64,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            scale_decoder_outputs=False,
        ),
        data=DataConfig(corpus=WHO_SPEAKS, tokenizer="sentencepiece", vocab_size=512, seq_len=32),
        task=dataclasses.replace(exp.task, targets_length=8),
    )
