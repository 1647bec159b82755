"""Token classification (named-entity recognition) by fine-tuning BERT, as the BERT paper's
CoNLL-2003 experiment (Devlin et al. 2019, section 5.3).

Input is word-level: each example is a list of words with one BIO label per word. Every word is
WordPiece-encoded on its own; its first piece carries the word's label, the other pieces,
``[CLS]``, ``[SEP]`` and the padding get label -1 (weight 0 in the loss), as the paper. A
sentence longer than ``data.seq_len`` pieces (with ``[CLS]`` and ``[SEP]``) is cut; the words
whose first piece was cut are counted per split and printed when the data is built. On
evaluation such cut words are predicted "O", so the entity metrics still count every gold entity
of the split (a cut gold entity is a miss, never silently dropped).

Sources (``data.corpus``):

- ``tfds:conll2003`` (TFDS; ``tokens`` and ``ner`` class ids, whose names are the dataset's
  ``O, B-PER, I-PER, B-ORG, I-ORG, B-LOC, I-LOC, B-MISC, I-MISC``): train on ``train``, evaluate on
  ``task.eval_split`` (``dev`` by default, ``test`` for the test F1). Preparing it needs TensorFlow
  and the network; offline the run stops with an error saying how.
- a local file: the CoNLL-2003 four-column format (``word POS chunk NER``; ``-DOCSTART-`` lines
  skipped; a blank line between sentences) or two-column BIO (``word label``), chosen by the
  first line's column count (``task.format`` forces one). The validation split is
  ``data.val_corpus`` (the same format), else the last ``data.val_fraction`` of the sentences.
  A line with another column count is a ValueError naming the file and line number.
- ``shakespeare_names`` (offline, the embedded plays): characters' names inside the speeches,
  ``jaxformers.tasks.play_names``.

Label set: ``task.labels`` when given; else the one saved in the workdir (``labels.json``, so a
resumed run and ``jaxformers tag`` read the same ids); else the train split's labels, sorted with
"O" first (TFDS: the dataset's own class names). A validation (or train) label outside the set is
an error naming the file, line and label. The model's ``num_labels`` must equal the set's size.

Metrics: the summed evaluation gives the token-level loss and accuracy (over first pieces); the
entity-level precision, recall and F1 (``seqeval``, CoNLL's conlleval definition, in percent)
come from ``TokenClassificationData.decode_metrics``, over every validation example exactly once,
the word-level prediction being the argmax of the word's first piece.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxformers import storage
from jaxformers.data import sources
from jaxformers.data.pipeline import fingerprint
from jaxformers.inference import LABELS_JSON
from jaxformers.tasks.base import (
    TaskData,
    bert_forward,
    check_seq_len,
    example_data,
    file_stamp,
    kept_counts,
    random_bert_inputs,
    real_rows,
    token_cross_entropy,
    tokenizer_for,
)

PLAYS = "shakespeare_names"
FORMATS = ("auto", "conll2003", "bio")
# Words: runs of letters and digits; every other non-space character is a word of its own (as
# BERT's basic tokenizer splits punctuation). ``jaxformers tag`` splits raw text this way.
_WORD = re.compile(r"\w+|[^\w\s]")


def split_words(text: str) -> list[tuple[str, int, int]]:
    """Raw text -> (word, start, end) with character offsets, as the task and ``tag`` split it."""
    return [(m.group(), m.start(), m.end()) for m in _WORD.finditer(text)]


class Sentence(NamedTuple):
    """One example: words, their labels, and where they come from (``path``, 1-based line of each
    word; line 0 where there is no file)."""

    words: list[str]
    labels: list[str]
    path: str = ""
    lines: list[int] | None = None

    def where(self, i: int) -> str:
        if self.lines is None:
            return f"{self.path or 'example'} (word {i + 1} {self.words[i]!r})"
        return f"{self.path}:{self.lines[i]}"


# ------------------------------------------------------------------------------------ readers


def read_conll(path: str, fmt: str = "auto") -> list[Sentence]:
    """A CoNLL-2003 (``word POS chunk NER``) or two-column BIO (``word label``) file -> sentences.

    Columns are separated by whitespace; ``-DOCSTART-`` lines are skipped; a blank line ends a
    sentence. ``fmt="auto"`` takes the format from the first word line's column count (4 or 2).
    A line with another count is a ValueError naming ``path`` and the line number.
    """
    if fmt not in FORMATS:
        raise ValueError(f"task.format={fmt!r}: choose one of {', '.join(FORMATS)}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"token-classification file {path} does not exist")
    want = {"conll2003": 4, "bio": 2}.get(fmt)
    out, words, labels, lines = [], [], [], []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            cols = line.split()
            if not cols or cols[0] == "-DOCSTART-":
                if words:
                    out.append(Sentence(words, labels, path, lines))
                    words, labels, lines = [], [], []
                continue
            if want is None:
                if len(cols) not in (2, 4):
                    raise ValueError(
                        f"{path}:{n}: {len(cols)} columns; a CoNLL-2003 line is 'word POS chunk "
                        "NER' (4 columns), a BIO line 'word label' (2)"
                    )
                want = len(cols)
            if len(cols) != want:
                kind = "word POS chunk NER" if want == 4 else "word label"
                raise ValueError(
                    f"{path}:{n}: malformed line {line.rstrip()!r}: {len(cols)} columns where the "
                    f"file's format has {want} ({kind})"
                )
            words.append(cols[0])
            labels.append(cols[-1])
            lines.append(n)
    if words:
        out.append(Sentence(words, labels, path, lines))
    if not out:
        raise ValueError(f"token-classification file {path} holds no sentences")
    return out


def tfds_sentences(name: str, split: str, data_dir: str) -> tuple[Callable, tuple[str, ...]]:
    """(function yielding a TFDS split's sentences, the dataset's label names). The records hold
    ``tokens`` and ``ner`` class ids (``tensorflow_datasets``' CoNLL builders)."""
    try:
        src = sources.catalog_split(f"{name}:{split}", data_dir, None, f"data.corpus=tfds:{name}")
    except RuntimeError as e:  # not prepared, and cannot be here
        raise RuntimeError(
            f"{e}. For NER, local CoNLL-2003 files work too: --set data.corpus=train.txt "
            "--set data.val_corpus=valid.txt"
        ) from e
    try:
        names = tuple(src.dataset_info.features["ner"].feature.names)
    except (AttributeError, KeyError, TypeError):
        from tensorflow_datasets.core.dataset_builders.conll import conll_dataset_builder_utils

        names = tuple(conll_dataset_builder_utils.NER_TAGS)

    def text(x):
        return x.decode("utf-8") if isinstance(x, bytes) else str(x)

    def run():
        for i in range(len(src)):
            r = src[i]
            words = [text(w) for w in r["tokens"]]
            if words:
                yield Sentence(words, [names[int(t)] for t in r["ner"]], f"tfds:{name}/{split}#{i}")

    return run, names


# ------------------------------------------------------------------------------- alignment


def encode_words(
    tok: Any, words: Sequence[str], label_ids: Sequence[int], T: int
) -> tuple[list[int], list[int], int]:
    """``[CLS] pieces [SEP]`` ids and their labels (the word's label on its first piece, -1
    elsewhere), at most ``T`` tokens; returns (ids, labels, number of words kept: those whose
    first piece fits). A word with no pieces (e.g. a control character) becomes ``[UNK]``."""
    room = T - 2
    if room < 1:
        raise ValueError(f"data.seq_len={T} leaves no room for a word; raise it")
    ids, labels, kept = [tok.cls_id], [-1], 0
    for pieces, label in zip(tok.encode_batch(list(words)), label_ids):
        pieces = pieces or [tok.unk_id]
        if len(ids) - 1 >= room:
            break
        pieces = pieces[: room - (len(ids) - 1)]
        ids += pieces
        labels += [int(label)] + [-1] * (len(pieces) - 1)
        kept += 1
    return ids + [tok.sep_id], labels + [-1], kept


def label_ids_of(sentence: Sentence, index: dict[str, int]) -> list[int]:
    """The sentence's label ids; a label outside the set is an error naming where it is."""
    out = []
    for i, label in enumerate(sentence.labels):
        if label not in index:
            raise ValueError(
                f"{sentence.where(i)}: label {label!r} is not in the label set "
                f"{list(index)} (the train split's labels, or task.labels); fix the label or "
                "give the full set with --set task.labels=..."
            )
        out.append(index[label])
    return out


def labels_from(sentences: Iterator[Sentence]) -> tuple[str, ...]:
    """The sorted label set of some sentences, "O" first."""
    seen = {label for s in sentences for label in s.labels}
    return tuple(sorted(seen, key=lambda x: (x != "O", x)))


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 in percent (seqeval's default mode, CoNLL's
    conlleval: an entity counts when its type and both ends match)."""
    from seqeval.metrics import f1_score, precision_score, recall_score

    return {
        "entity_precision": 100.0 * precision_score(gold, pred, zero_division=0),
        "entity_recall": 100.0 * recall_score(gold, pred, zero_division=0),
        "entity_f1": 100.0 * f1_score(gold, pred, zero_division=0),
    }


def entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """(type, first word, last word) of each entity in a BIO tag sequence (seqeval's reading)."""
    from seqeval.metrics.sequence_labeling import get_entities

    return [(t, s, e) for t, s, e in get_entities(list(tags))]


@functools.partial(jax.jit, static_argnums=0)
def predict_labels(model, params, input_ids, segment_ids, input_mask):  # [B, T] each -> [B, T]
    out = model.apply(
        {"params": params},
        input_ids,
        token_type_ids=segment_ids,
        attention_mask=input_mask,
        deterministic=True,
    )
    return jnp.argmax(out.logits, axis=-1)


# ------------------------------------------------------------------------------- the task


@dataclasses.dataclass(frozen=True)
class TokenClassification:
    """One BIO label per word (module docstring).

    Attributes:
      labels: the label set in id order; empty: the workdir's ``labels.json``, else the train
        split's labels sorted with "O" first (TFDS: the dataset's class names).
      format: local files' format: auto (by column count), conll2003 or bio.
      eval_split: the TFDS split evaluated (conll2003: dev or test).
      max_words: the plays source's longest example in words (speeches cut at line breaks).
      max_examples: read at most this many sentences of each split (0: all; smoke tests).
    """

    labels: tuple[str, ...] = ()
    format: str = "auto"
    eval_split: str = "dev"
    max_words: int = 32
    max_examples: int = 0

    name: ClassVar[str] = "token_classification"
    input_keys: ClassVar[tuple[str, ...]] = ("input_ids",)

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"task.format={self.format!r}: choose one of {', '.join(FORMATS)}")
        if self.labels and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"task.labels={self.labels} names a label twice")
        if self.max_examples < 0:
            raise ValueError(f"task.max_examples={self.max_examples} must be >= 0 (0: all)")
        if self.max_words < 1:
            raise ValueError(f"task.max_words={self.max_words} must be >= 1")

    def read(self, d: Any, data_dir: str) -> tuple[dict[str, Callable], tuple[str, ...] | None]:
        """(split -> function yielding its sentences, the source's own label names or None)."""
        read, own = self._read(d, data_dir)
        if self.max_examples:
            m = self.max_examples
            read = {k: (lambda f=f: itertools.islice(f(), m)) for k, f in read.items()}
        return read, own

    def _read(self, d: Any, data_dir: str) -> tuple[dict[str, Callable], tuple[str, ...] | None]:
        corpus = d.corpus
        if corpus == PLAYS:
            from jaxformers.data import play_names

            splits = play_names.sentences(self.max_words)
            return {k: (lambda v=v: iter(v)) for k, v in splits.items()}, None
        if corpus.startswith("tfds:"):
            name = corpus[len("tfds:") :]
            train, names = tfds_sentences(name, "train", data_dir)
            val, _ = tfds_sentences(name, self.eval_split, data_dir)
            return {"train": train, "validation": val}, names
        if not os.path.isfile(corpus):
            raise ValueError(
                f"token-classification corpus {corpus!r}: give tfds:conll2003, {PLAYS} or a "
                "CoNLL-2003 / two-column BIO file (data.val_corpus: its dev file)"
            )
        rows = read_conll(corpus, self.format)
        if d.val_corpus:
            val = read_conll(d.val_corpus, self.format)
        else:
            cut = int(len(rows) * (1 - d.val_fraction))
            rows, val = rows[:cut], rows[cut:]
            if not rows or not val or not 0 < d.val_fraction < 1:
                raise ValueError(
                    f"{corpus} has {len(rows) + len(val)} sentences: too few to hold out "
                    f"data.val_fraction={d.val_fraction} of them; give data.val_corpus=DEV_FILE"
                )
        return {"train": lambda: iter(rows), "validation": lambda: iter(val)}, None

    def label_set(self, read, own, workdir: str) -> tuple[str, ...]:
        if self.labels:
            return tuple(self.labels)
        saved = storage.join(workdir, LABELS_JSON)
        if storage.isfile(saved):
            return tuple(json.loads(storage.read_text(saved)))
        return own if own else labels_from(read["train"]())

    def build_data(self, exp: Any, workdir: str) -> TokenClassificationData:
        check_seq_len(exp)
        d = exp.data
        data_dir = sources.data_dir_for(d, workdir)
        read, own = self.read(d, data_dir)
        labels = self.label_set(read, own, workdir)
        if len(labels) != exp.model.num_labels:
            raise ValueError(
                f"the label set has {len(labels)} labels ({', '.join(labels)}) but "
                f"model.num_labels={exp.model.num_labels}: --set model.num_labels={len(labels)}"
            )
        if jax.process_index() == 0:
            storage.makedirs(workdir)
            storage.write_text(storage.join(workdir, LABELS_JSON), json.dumps(list(labels)))
        index = {label: i for i, label in enumerate(labels)}
        tok = tokenizer_for(exp, workdir, lambda: (" ".join(s.words) for s in read["train"]()))
        T = d.seq_len
        counts: dict = {}

        def encode(split):
            def run():
                c = counts.setdefault(split, {"sentences": 0, "words": 0, "words_cut": 0})
                for k, s in enumerate(read[split]()):
                    ids, lab, kept = encode_words(tok, s.words, label_ids_of(s, index), T)
                    n = len(ids)
                    c["sentences"] += 1
                    c["words"] += len(s.words)
                    c["words_cut"] += len(s.words) - kept
                    yield {
                        "input_ids": np.asarray(ids + [tok.pad_id] * (T - n), np.int32),
                        "input_mask": np.asarray([1] * n + [0] * (T - n), np.int32),
                        "segment_ids": np.zeros(T, np.int32),
                        "labels": np.asarray(lab + [-1] * (T - n), np.int32),
                        "example_id": np.int32(k),
                    }

            return run

        spec = {
            "input_ids": ((T,), np.int32),
            "input_mask": ((T,), np.int32),
            "segment_ids": ((T,), np.int32),
            "labels": ((T,), np.int32),
            "example_id": ((), np.int32),
        }
        key = [
            d.corpus,
            file_stamp(d.corpus),
            d.val_corpus,
            file_stamp(d.val_corpus),
            d.val_fraction,
        ]
        key += [
            self.format,
            self.eval_split,
            self.max_words,
            self.max_examples,
            T,
            labels,
            tok.vocab,
            tok.lowercase,
        ]
        name = "ner_" + fingerprint(key)
        built = sources.prepare_examples(name, {s: encode(s) for s in read}, spec, data_dir)
        unknown = {"sentences": -1, "words": -1, "words_cut": -1}
        cut = kept_counts(os.path.join(data_dir, "ner_counts", name + ".json"), counts, unknown)
        if jax.process_index() == 0:
            print(
                "token classification: "
                + "; ".join(
                    f"{s} {c['sentences']:,} sentences, {c['words']:,} words, "
                    f"{c['words_cut']:,} words cut by data.seq_len={T}"
                    for s, c in cut.items()
                ),
                flush=True,
            )
        gold = [s.labels for s in read["validation"]()]
        data = example_data(exp, tok, built, spec, (T,), (T, 0))
        return TokenClassificationData(data, labels, built["validation"], gold, cut)

    def normalizers(self, batch):
        return {"tokens": jnp.sum(batch["labels"] >= 0)}

    def loss(self, params, apply_fn, batch, rng, deterministic, norms):
        out = bert_forward(apply_fn, params, batch, rng, deterministic)
        labels = batch["labels"]
        w = (labels >= 0).astype(jnp.float32) * real_rows(batch)[:, None]
        nll, correct = token_cross_entropy(out.logits, jnp.maximum(labels, 0), w)
        sums = {"loss": nll, "correct": correct, "tokens": jnp.sum(w)}
        return nll / jnp.maximum(norms["tokens"], 1), sums

    def finalize(self, s):
        n = jnp.maximum(s["tokens"], 1)
        return {"loss": s["loss"] / n, "token_accuracy": s["correct"] / n}

    def random_examples(
        self, rng, model_config, n: int, seq_len: int, num_predictions: int = 0
    ) -> dict:
        T = seq_len
        labels = rng.integers(0, model_config.num_labels, (n, T), dtype=np.int32)
        labels[:, 0] = labels[:, -1] = -1
        return {
            **random_bert_inputs(rng, model_config.vocab_size, n, T),
            "labels": labels,
            "example_id": np.arange(n, dtype=np.int32),
        }


class TokenClassificationData(TaskData):
    """The task's batches plus what the entity metrics need: the label names, the validation rows
    and every validation sentence's gold labels (by example id)."""

    def __init__(self, data: TaskData, labels, val_rows, gold, counts):
        self.__dict__.update(data.__dict__)
        self.labels, self.val_rows, self.gold, self.counts = tuple(labels), val_rows, gold, counts
        self.eval_batch_size = data.val.global_batch

    def predict_all(self, model, params, n: int) -> dict[int, list[str]]:
        """Example id -> predicted word labels of the first ``n`` validation rows (the same on every
        process: each tags the whole list). Cut words are "O"."""
        b, out = self.eval_batch_size, {}
        keys = ("input_ids", "segment_ids", "input_mask", "labels", "example_id")
        for lo in range(0, n, b):
            rows = [self.val_rows[k] for k in range(lo, min(lo + b, n))]
            x = {k: np.stack([np.asarray(r[k]) for r in rows]) for k in keys}
            fill = b - len(rows)  # the last batch: blank rows keep one compiled shape
            x = {
                k: np.concatenate([v, np.zeros((fill, *v.shape[1:]), v.dtype)])
                for k, v in x.items()
            }
            pred = np.asarray(
                jax.device_get(
                    predict_labels(model, params, x["input_ids"], x["segment_ids"], x["input_mask"])
                )
            )
            for j in range(len(rows)):
                i = int(x["example_id"][j])
                if i in out or not 0 <= i < len(self.gold):
                    raise ValueError(
                        f"validation example id {i} appears twice or is out of range (of "
                        f"{len(self.gold)}); delete the prepared data to rebuild it"
                    )
                first = pred[j][x["labels"][j] >= 0]
                words = [self.labels[int(c)] for c in first]
                out[i] = words + ["O"] * (len(self.gold[i]) - len(words))
        return out

    def decode_metrics(self, model, params, num_batches: int) -> dict:
        """Entity precision/recall/F1 (percent, seqeval) over the examples of the first
        ``num_batches`` evaluation batches (the whole split when it is all of them), each once."""
        n = min(len(self.val_rows), num_batches * self.eval_batch_size)
        pred = self.predict_all(model, params, n)
        ids = sorted(pred)
        scores = entity_scores([self.gold[i] for i in ids], [pred[i] for i in ids])
        return {"tagged": float(len(ids)), **scores}


# ------------------------------------------------------------------------------- tagging


def label_names(path: str, num_labels: int) -> tuple[str, ...]:
    """The label names of a token-classification model: a workdir's ``labels.json``, else an HF
    directory's ``config.json`` ``id2label``; an error when neither names them."""
    from jaxformers import hf

    local = path if storage.is_url(path) else hf.resolve(path)
    names = None
    if storage.isfile(storage.join(local, LABELS_JSON)):
        names = tuple(json.loads(storage.read_text(storage.join(local, LABELS_JSON))))
    elif storage.isfile(storage.join(local, "config.json")):
        id2label = json.loads(storage.read_text(storage.join(local, "config.json"))).get("id2label")
        if id2label:
            names = tuple(id2label[str(i)] for i in range(len(id2label)))
    if not names or all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        raise ValueError(
            f"{path} names no labels: a token-classification workdir keeps them in {LABELS_JSON}, "
            "an HF directory in config.json's id2label (B-PER, I-PER, O ...)"
        )
    if len(names) != num_labels:
        raise ValueError(f"{path} names {len(names)} labels but its model has {num_labels}")
    return names


def tag_text(
    model: Any,
    params: Any,
    tok: Any,
    labels: Sequence[str],
    text: str,
    max_length: int | None = None,
) -> list[dict]:
    """The entities of ``text``: ``[{"text", "label", "start", "end"}]`` with character offsets
    (``text[start:end]``), in order. The text is split into words as the task splits them
    (``split_words``) and tagged in chunks of whole words that fit ``max_length`` pieces
    (default: the model's positions), so nothing is cut; each word's label is its first piece's
    argmax."""
    words = split_words(text)
    if not words:
        return []
    T = max_length or model.config.max_position_embeddings
    if T < 3:
        raise ValueError(f"max_length {T} leaves no room for a word")
    pieces = [(p or [tok.unk_id])[: T - 2] for p in tok.encode_batch([w for w, _, _ in words])]
    chunks, cur, n = [], [], 0
    for k, p in enumerate(pieces):
        if cur and n + len(p) > T - 2:
            chunks.append(cur)
            cur, n = [], 0
        cur.append(k)
        n += len(p)
    chunks.append(cur)
    ids = np.full((len(chunks), T), tok.pad_id, np.int32)
    mask = np.zeros((len(chunks), T), np.int32)
    firsts = []
    for r, chunk in enumerate(chunks):
        row, first = [tok.cls_id], []
        for k in chunk:
            first.append(len(row))
            row += pieces[k]
        row.append(tok.sep_id)
        ids[r, : len(row)], mask[r, : len(row)] = row, 1
        firsts.append(first)
    pred = np.asarray(predict_labels(model, params, ids, np.zeros_like(ids), mask))
    tags = [labels[int(pred[r, j])] for r, first in enumerate(firsts) for j in first]
    return [
        {
            "text": text[words[a][1] : words[b][2]],
            "label": kind,
            "start": words[a][1],
            "end": words[b][2],
        }
        for kind, a, b in entities(tags)
    ]
