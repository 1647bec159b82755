"""Streaming pretraining examples on grain: built per document while the batches are drawn.

BERT (MLM + NSP) and T5 (span corruption) examples are not built for the whole corpus before
step 1: documents are read by index from a random-access TFDS data source and turned into
examples inside a grain pipeline, so the memory a run needs does not grow with the corpus.

A training stream, on each host::

    document indices [p::P] -> shuffled per epoch -> repeated                 (grain MapDataset)
    -> each visit (epoch, document) becomes that document's examples, a list  (worker processes)
    -> flattened -> window-shuffled -> [T5: first-fit packed] -> batched      (this process)

- Sharding: the documents are dealt to ``S`` data shards, shard ``s`` reading documents
  ``s, s + S, ...`` (a BERT random B segment may come from any document: it is read by index),
  and each shard gives ``global_batch / S`` rows of every batch, the shards' rows side by side.
  ``S`` is ``data.stream_shards``, by default the host count (one shard per host); host ``p``
  of ``P`` draws shards ``p * S/P ... (p + 1) * S/P - 1``. The batches are a function of ``S``,
  not of ``P``: a run on 2 hosts and one on 1 host with ``data.stream_shards=2`` train on the
  same batches (the tests check it), so a run can move to another host count and keep its data
  order by fixing ``S``.
- Workers (``data.worker_count`` > 0, grain's ``mp_prefetch``) compute the per-document lists;
  worker ``w`` takes every W-th visit and grain reads them back round robin, so the stream is the
  same for any worker count (0 computes them in this process).
- Everything is a pure function of (seed, epoch, document): a document's examples come from a
  random stream of its own (``mlm_nsp.document_instances``, ``span_corruption.document_examples``).
- The iterator's position is grain's iterator state (``get_state`` / ``set_state``, JSON); the
  Trainer saves it with every checkpoint, one file per process, through grain's orbax handler,
  so a resumed run continues with the very batches an uninterrupted one would have seen.

Evaluation streams read every validation document once, in order, on every host (each host keeps
its rows of each global batch, as ``pipeline.ExampleBatches`` does), the last batch padded with
all-zero rows that the tasks weigh 0.
"""

from __future__ import annotations

import array
import collections
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from jaxformers.data.pipeline import check_divisible
from jaxformers.data.sources import record_text
from jaxformers.objectives import mlm_nsp, span_corruption

log = logging.getLogger("jaxformers")

# Tokens of tokenized documents kept per process for random B segments (int32: 16 MB).
CACHE_TOKENS = 1 << 22
# Sentence boundaries kept for random B segments (two int32 each: 32 MB).
CACHE_SPANS = 1 << 22
# T5 packing bins: 1 is the greedy in-order packing of seqio's trim_and_pack (and of
# ``span_corruption.pack_examples``); more bins pack tighter but mix the order.
PACKING_BINS = 1


# ---------------------------------------------------------------------------------------------
# Documents by index


class LazyDocuments(Sequence):
    """``docs[i]``: document ``i`` of a TFDS text source as sentences of token ids, computed on
    access and kept in a small LRU cache (at most ``cache_tokens`` tokens, as int32 arrays).

    ``to_sentences(text) -> list of lists of ids``; empty sentences are dropped here.

    ``docs.sentences(i)`` is the same document for reading a few sentences of it (a random B
    segment): until the token cache first overflows it is ``docs[i]``; after that, a
    document not in it is a view that tokenizes a sentence only when it is read,
    its sentence boundaries kept in a second LRU (``cache_spans`` sentences, two int32 each).
    Without it a corpus larger than the token cache re-tokenized a whole document for every
    random B: a 10x copy of the plays (a play is a document) gave no batch in 300 s.
    """

    def __init__(
        self,
        source,
        to_sentences: Callable,
        cache_tokens: int = CACHE_TOKENS,
        cache_spans: int = CACHE_SPANS,
    ):
        self.source, self.to_sentences = source, to_sentences
        self.cache_tokens, self.cache_spans = cache_tokens, cache_spans
        self._cache, self._tokens, self._evicted = collections.OrderedDict(), 0, False
        self._spans, self._span_count = collections.OrderedDict(), 0

    def __getstate__(self):  # workers start with empty caches
        return {
            **self.__dict__,
            "_cache": collections.OrderedDict(),
            "_tokens": 0,
            "_evicted": False,
            "_spans": collections.OrderedDict(),
            "_span_count": 0,
        }

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i):
        i = int(i)
        doc = self._cache.get(i)
        if doc is not None:
            self._cache.move_to_end(i)
            return doc
        doc = [array.array("i", s) for s in self.to_sentences(record_text(self.source[i])) if s]
        self._tokens += sum(len(s) for s in doc)
        self._cache[i] = doc
        while self._tokens > self.cache_tokens and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._tokens -= sum(len(s) for s in old)
            self._evicted = True
        return doc

    def sentences(self, i) -> Sequence[Sequence[int]]:
        """Document ``i``'s non-empty sentences, equal to ``docs[i]``, tokenized on access."""
        i = int(i)
        doc = self._cache.get(i)
        if doc is not None:
            return doc
        if not self._evicted:  # while the corpus fits, cache documents whole
            return self[i]
        text = record_text(self.source[i])
        spans = self._spans.get(i)
        if spans is None:
            spans = np.asarray(self.to_sentences.spans(text), np.int32).reshape(-1, 2)
            self._span_count += len(spans)
            self._spans[i] = spans
            while self._span_count > self.cache_spans and len(self._spans) > 1:
                self._span_count -= len(self._spans.popitem(last=False)[1])
        else:
            self._spans.move_to_end(i)
        return _SentenceView(text, spans, self.to_sentences)


class _SentenceView(Sequence):
    """A document's sentences ``text[a:b]`` for its spans, each tokenized when first read."""

    def __init__(self, text: str, spans: np.ndarray, to_sentences):
        self.text, self.spans, self.to_sentences, self._ids = text, spans, to_sentences, {}

    def __len__(self) -> int:
        return len(self.spans)

    def __getitem__(self, j):
        j = int(j)
        if j not in self._ids:
            a, b = self.spans[j]
            self._ids[j] = self.to_sentences.encode(self.text[a:b])
        return self._ids[j]


class _Corpus(Sequence):
    """What one document's instances read: the document itself whole (every sentence is used),
    any other document through ``LazyDocuments.sentences`` (a random B uses a few); an empty
    document reads as the next non-empty one, so a random B is never drawn from nothing
    (``create_instances`` drops empty documents before it draws)."""

    def __init__(self, docs: LazyDocuments, own: int):
        self.docs, self.own = docs, own

    def __len__(self) -> int:
        return len(self.docs)

    def __getitem__(self, i):
        n = len(self.docs)
        for k in range(n):
            j = (int(i) + k) % n
            doc = self.docs[j] if j == self.own else self.docs.sentences(j)
            if len(doc):
                return doc
        raise ValueError("every document of the corpus is empty: give a corpus with text")


class WordPieceSentences:
    """Text -> sentences (``mlm_nsp.sentence_split``) -> WordPiece ids, as BERT's documents."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, text: str) -> list[list[int]]:
        sents = mlm_nsp.sentence_split(text)
        return self.tokenizer.encode_batch(sents) if sents else []

    def spans(self, text: str) -> list[tuple[int, int]]:
        """The spans of the sentences of ``text`` that give at least one token: those of
        ``self(text)``'s non-empty entries, mostly without tokenizing (a sentence with a letter
        or digit always gives one; BERT's normaliser removes only control, format and
        combining characters and whitespace)."""
        return [
            (a, b)
            for a, b in mlm_nsp.sentence_spans(text)
            if _WORD.search(text, a, b) or self.encode(text[a:b])
        ]

    def encode(self, sentence: str) -> list[int]:
        """One sentence's ids (``encode``: half the time of a batch of one)."""
        return self.tokenizer.encode(sentence)


_WORD = re.compile(r"[^\W_]")


# ---------------------------------------------------------------------------------------------
# Per-document examples (run in the workers)


class BertDocument:
    """A visit ``(epoch, doc)`` -> the document's MLM+NSP instances (``document_instances``).

    Pass ``epoch % dupe_factor`` draws the pairs and masks: ``dupe_factor`` static variants, as
    google-research/bert's duplicates. With ``dynamic_masking`` the pairs stay those of pass 0
    and every epoch re-masks them (``dynamic_mask``, seeded by (seed, epoch, doc, k)).
    """

    def __init__(
        self,
        docs: LazyDocuments,
        vocab: Sequence[str],
        seed: int,
        dupe_factor: int = 1,
        dynamic_masking: bool = False,
        **args,
    ):
        self.docs, self.vocab, self.seed = docs, mlm_nsp.MaskingVocab.from_tokens(vocab), seed
        self.dupe_factor, self.dynamic_masking, self.args = dupe_factor, dynamic_masking, args

    def __call__(self, visit) -> list[dict[str, np.ndarray]]:
        epoch, doc = (int(x) for x in visit)
        if not self.docs[doc]:
            return []
        dupe = 0 if self.dynamic_masking else epoch % self.dupe_factor
        insts = mlm_nsp.document_instances(
            _Corpus(self.docs, doc), doc, self.vocab, seed=self.seed, dupe=dupe, **self.args
        )
        if self.dynamic_masking:
            insts = [
                {
                    **inst,
                    **mlm_nsp.dynamic_mask(
                        inst,
                        self.vocab,
                        np.random.default_rng([self.seed, epoch, doc, k]),
                        max_predictions_per_seq=self.args["max_predictions_per_seq"],
                        masked_lm_prob=self.args["masked_lm_prob"],
                        do_whole_word_mask=self.args["do_whole_word_mask"],
                    ),
                }
                for k, inst in enumerate(insts)
            ]
        return insts


class SpanDocument:
    """A visit ``(epoch, doc)`` -> the document's span-corruption examples
    (``document_examples`` with seed (seed, epoch, doc)): fresh noise every epoch."""

    def __init__(self, source, tokenizer, raw_length: int, seed: int, **args):
        self.source, self.tokenizer, self.raw_length, self.seed = (
            source,
            tokenizer,
            raw_length,
            seed,
        )
        self.args = args

    def __call__(self, visit) -> list[dict[str, np.ndarray]]:
        epoch, doc = (int(x) for x in visit)
        tokens = self.tokenizer.encode(record_text(self.source[doc]))
        return span_corruption.document_examples(
            tokens,
            self.tokenizer.vocab_size,
            self.raw_length,
            (self.seed, epoch, doc),
            eos_id=self.tokenizer.eos_id,
            **self.args,
        )


class _Visit:
    """Index ``i`` of the repeated document order -> (epoch, document)."""

    def __init__(self, per_epoch: int):
        self.per_epoch = per_epoch

    def __call__(self, i: int, doc: int) -> tuple[int, int]:
        return i // self.per_epoch, int(doc)


def to_columns(examples: list[dict]) -> dict[str, np.ndarray]:
    """A document's examples (dicts of 0-d or 1-d arrays) as a few flat arrays: per feature the
    values end to end and each example's length. grain hands a worker's output to this process
    through one shared-memory block per array: thousands of small arrays per document would
    exhaust the open files; a handful per document does not."""
    out: dict[str, np.ndarray] = {}
    for key in examples[0] if examples else ():
        arrs = [np.asarray(e[key]) for e in examples]
        out[key] = np.concatenate([a.reshape(-1) for a in arrs])
        out[key + "/sizes"] = np.array([a.size for a in arrs], np.int64)
        out[key + "/ndim"] = np.array(arrs[0].ndim, np.int64)
    return out


def from_columns(columns: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """The examples of ``to_columns`` back."""
    keys = [k for k in columns if "/" not in k]
    if not keys:
        return []
    parts = {}
    for key in keys:
        sizes = columns[key + "/sizes"]
        pieces = np.split(columns[key], np.cumsum(sizes)[:-1])
        parts[key] = pieces if int(columns[key + "/ndim"]) else [p.reshape(()) for p in pieces]
    return [{k: parts[k][i] for k in keys} for i in range(len(parts[keys[0]]))]


class _Flatten(grain.experimental.FlatMapTransform):
    max_fan_out = 1 << 20  # only the MapDataset form reads it; lists of any length pass

    def flat_map(self, columns):
        return from_columns(columns)


def visits(
    num_docs: int,
    seed: int | None,
    shard: int = 0,
    num_shards: int = 1,
) -> grain.MapDataset:
    """The (epoch, document) visits of one data shard: its documents ``[s::S]``, shuffled afresh
    every epoch and repeated (training); or, with ``seed=None``, every document once in order
    (epoch 0; evaluation)."""
    ds = grain.MapDataset.range(num_docs)[shard::num_shards]
    if len(ds) == 0:
        raise ValueError(
            f"the corpus has {num_docs} documents, fewer than the {num_shards} data shards "
            "(hosts, or data.stream_shards) that each read their own share: use a larger corpus"
        )
    if seed is None:
        return ds.map_with_index(_Visit(1 << 62))  # every index in epoch 0
    return ds.shuffle(seed=seed).repeat().map_with_index(_Visit(len(ds)))


# ---------------------------------------------------------------------------------------------
# T5 packing with grain's first-fit packer


class _PackedRow:
    """grain's packed features -> the t5x/seqio row layout of ``span_corruption.pack_examples``
    (decoder inputs: targets shifted right within each segment, starting with id 0)."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, ex: dict) -> dict[str, np.ndarray]:
        tgt = np.asarray(ex["targets"], np.int32)
        seg = np.asarray(ex["targets_segment_ids"], np.int32)
        pos = np.asarray(ex["targets_positions"], np.int32)
        shifted = np.where(pos == 0, 0, np.roll(tgt, 1)).astype(np.int32)
        return {
            "encoder_input_tokens": np.asarray(ex["inputs"], np.int32),
            "encoder_segment_ids": np.asarray(ex["inputs_segment_ids"], np.int32),
            "decoder_target_tokens": tgt,
            "decoder_input_tokens": np.where(seg > 0, shifted, self.pad_id).astype(np.int32),
            "decoder_segment_ids": seg,
            "decoder_loss_weights": (seg > 0).astype(np.float32),
        }


def pack_t5(ds: grain.IterDataset, inputs_length: int, targets_length: int, pad_id: int):
    """Span-corruption examples ``{"inputs", "targets"}`` -> packed rows (``_PackedRow``)."""
    packed = grain.experimental.FirstFitPackIterDataset(
        ds,
        length_struct={"inputs": inputs_length, "targets": targets_length},
        num_packing_bins=PACKING_BINS,
        shuffle_bins=False,
        padding_struct={"inputs": pad_id, "targets": pad_id},
    )
    return packed.map(_PackedRow(pad_id))


# ---------------------------------------------------------------------------------------------
# The streams the Trainer reads


def example_stream(
    per_doc: grain.MapDataset,
    shuffle_window: int = 0,
    seed: int = 0,
    pack: Callable[[grain.IterDataset], grain.IterDataset] | None = None,
    worker_count: int = 0,
) -> grain.IterDataset:
    """Per-document lists of examples -> a flat (window-shuffled, packed) IterDataset of
    examples; the lists are computed by ``worker_count`` worker processes (0: here)."""
    ds = per_doc.map(to_columns).to_iter_dataset()
    if worker_count:
        _worker_init(0, 0)  # grain reads absl flags in this process too
        ds = ds.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_count, per_worker_buffer_size=2),
            worker_init_fn=_worker_init,
        )
    ds = grain.experimental.FlatMapIterDataset(ds, _Flatten())
    if shuffle_window > 1:
        ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=shuffle_window, seed=seed)
    return pack(ds) if pack else ds


def _worker_init(index: int, count: int) -> None:
    """grain workers are fresh processes: absl flags parsed (as grain expects), no JAX devices."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _stack(examples: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(e[k]) for e in examples]) for k in examples[0]}


class TrainStream:
    """Training batches ``[A, b_local, ...]`` from endless example streams, read in order.

    ``batch(step)`` must be called for consecutive steps (the Trainer does); the position is
    restored with ``set_state`` (the checkpoint's grain state) or, failing that, by drawing and
    dropping ``step`` batches (``skip_to``).

    Args:
      make: builds the IterDataset of examples of one data shard (``example_stream``), or a list
        of such builders, one per shard this host draws (module docstring); called when the first
        batch is drawn, so building the task data starts no worker.
      global_batch, accum, process_index, process_count: as ``pipeline.ExampleBatches``.
      estimate: examples in one pass over the split, estimated (``steps_per_epoch``).
      workers: the worker processes each shard's dataset uses (recorded with the state).
    """

    def __init__(
        self,
        make: Callable[[], grain.IterDataset] | Sequence[Callable[[], grain.IterDataset]],
        global_batch: int,
        accum: int = 1,
        process_index: int = 0,
        process_count: int = 1,
        estimate: int = 0,
        workers: int = 0,
    ):
        self.makes = list(make) if isinstance(make, (list, tuple)) else [make]
        shards = len(self.makes) * process_count
        if global_batch % (accum * shards):
            raise ValueError(
                f"batch_size={global_batch} must divide into {accum} accumulation steps x "
                f"{shards} data shards ({len(self.makes)} per host x {process_count} hosts); "
                f"choose a multiple of {accum * shards} or change data.stream_shards"
            )
        self.accum, self.workers = accum, workers
        self.local = global_batch // process_count
        self.per_shard = global_batch // shards
        self.estimate = estimate
        self._its = None
        self.position = 0  # batches drawn

    def __len__(self) -> int:
        return self.estimate

    @property
    def iterators(self) -> list:
        if self._its is None:
            self._its = [iter(make()) for make in self.makes]
        return self._its

    def _draw(self) -> list[list[dict]]:
        return [[next(it) for _ in range(self.per_shard)] for it in self.iterators]

    def batch(self, step: int) -> dict[str, np.ndarray]:
        if step != self.position:
            self.skip_to(step)
        shards = self._draw()
        self.position += 1
        A = self.accum
        # Each shard's rows split into the A microbatches as a host's rows would be; the
        # shards' rows then sit side by side in every microbatch, as the hosts' do.
        parts = [_stack(exs) for exs in shards]
        return {
            k: np.concatenate(
                [p[k].reshape((A, self.per_shard // A) + p[k].shape[1:]) for p in parts], axis=1
            )
            for k in parts[0]
        }

    def skip_to(self, step: int) -> None:
        """Positions the stream before batch ``step`` by drawing the batches before it (from the
        start when it is past ``step``): exact, but it costs the work of those batches."""
        if step < self.position:
            self.close()
            self.position = 0
        if step > self.position:
            log.warning(
                "the data stream has no saved position for step %d: drawing %d batches to reach it",
                step,
                step - self.position,
            )
        while self.position < step:
            self._draw()
            self.position += 1

    def get_state(self) -> dict:
        """grain's iterator state (one per shard of this host), the number of batches drawn and
        the worker count (grain's state has one entry per worker), JSON-serialisable."""
        states = [it.get_state() for it in self.iterators]
        return {
            "batches": self.position,
            "grain": states[0] if len(states) == 1 else states,
            "workers": self.workers,
        }

    def set_state(self, state: dict) -> None:
        """Continues from ``get_state``'s record; ValueError for one of another worker count or
        shard layout (then ``skip_to`` reaches the same place: the stream does not depend on the
        worker count)."""
        if int(state.get("workers", 0)) != self.workers:
            raise ValueError(
                f"the saved data position is of {state.get('workers', 0)} data worker(s), this "
                f"run has data.worker_count={self.workers}"
            )
        states = state["grain"] if isinstance(state["grain"], list) else [state["grain"]]
        if len(states) != len(self.makes):
            raise ValueError(
                f"the saved data position is of {len(states)} data shard(s) on this host, this "
                f"run draws {len(self.makes)}"
            )
        for it, st in zip(self.iterators, states):
            it.set_state(st)
        self.position = int(state["batches"])

    def checkpoint_item(self) -> DataState:
        """The position now, for ``checkpoint.Checkpointer.save(data=...)``."""
        return DataState(self.get_state())

    def close(self) -> None:
        """Stops the worker processes, if any."""
        for it in self._its or []:
            if hasattr(it, "close"):
                it.close()
        self._its = None


class DataState:
    """A stream position in the form grain's orbax handler saves and restores: ``get_state``
    returns JSON bytes, ``set_state`` takes them (the handler's non-DatasetIterator protocol)."""

    def __init__(self, state: dict | None = None, target: TrainStream | None = None):
        self.state, self.target = state, target

    def get_state(self) -> bytes:
        return json.dumps(self.state).encode()

    def set_state(self, state: bytes) -> None:
        self.state = json.loads(state)
        if self.target is not None:
            self.target.set_state(self.state)

    def start_prefetch(self) -> None:
        pass


class EvalStream:
    """Evaluation batches ``[1, b_local, ...]``: every example of a finite stream once, in
    order, on every host (each keeps its rows); past the end all-zero rows.

    Args:
      make: builds the finite IterDataset of examples (the same on every host).
      global_batch: rows per evaluation batch over all hosts.
    """

    def __init__(
        self,
        make: Callable[[], grain.IterDataset],
        global_batch: int,
        process_index: int = 0,
        process_count: int = 1,
    ):
        check_divisible(global_batch, 1, process_count)
        self.make, self.global_batch = make, global_batch
        self.rows = slice(
            process_index * (global_batch // process_count),
            (process_index + 1) * (global_batch // process_count),
        )
        self._it, self._next, self._count, self._at_least = None, 0, None, 0
        self._blank = None

    def batches_up_to(self, limit: int | None = None) -> int:
        """Batches in the split, counted by one pass (stopping at ``limit``)."""
        if self._count is not None:
            return self._count if limit is None else min(self._count, limit)
        if limit is not None and self._at_least >= limit:
            return limit
        n = 0
        for n, _ in enumerate(self._batches(), start=1):
            if limit is not None and n >= limit:
                self._at_least = n
                return n
        self._count = n
        return n

    @property
    def num_batches(self) -> int:
        return self.batches_up_to()

    def __len__(self) -> int:
        return self.num_batches * self.global_batch

    def _batches(self):
        buf = []
        for ex in self.make():
            buf.append(ex)
            if len(buf) == self.global_batch:
                yield buf
                buf = []
        if buf:
            yield buf

    def batch(self, i: int) -> dict[str, np.ndarray]:
        if self._it is None or i != self._next:
            self._it, self._next = self._batches(), 0
        while True:
            exs = next(self._it, None)
            self._next += 1
            if self._next > i or exs is None:
                break
        if exs is None:
            exs = []
        if exs and self._blank is None:
            self._blank = {k: np.zeros_like(np.asarray(v)) for k, v in exs[0].items()}
        if self._blank is None:
            raise ValueError("the validation split yields no examples; use a larger corpus")
        exs = exs + [self._blank] * (self.global_batch - len(exs))
        b = _stack(exs[self.rows])
        return {k: v[None] for k, v in b.items()}


def estimate_examples(
    per_doc: Callable[[tuple[int, int]], list], num_docs: int, sample: int = 8
) -> int:
    """Examples in one pass, estimated from the first ``sample`` documents (an epoch budget and
    the start-of-run summary use it; the stream itself needs no count)."""
    k = min(sample, num_docs)
    if k == 0:
        return 0
    n = sum(len(per_doc((0, d))) for d in range(k))
    return max(1, math.ceil(n * num_docs / k))


def json_state(state: Any) -> Any:
    """``state`` through JSON and back (what a checkpoint holds)."""
    return json.loads(json.dumps(state))
