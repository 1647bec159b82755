"""Streaming pretraining data (jaxformers.data.streaming): BERT instances and T5 packed rows built
per document inside a grain pipeline, checked against the in-memory algorithms; the iterator
state round trip; the bounded tokenizer sample.

The corpus is real text (the embedded plays cut into ~1.5 KB documents) prepared through TFDS as
array_record, read back by index; the tokenizers are trained on it (WordPiece, SentencePiece).
"""

import json
import os
import random
import shutil

import numpy as np
import pytest
from helpers import ROOT

from jaxformers import config, train
from jaxformers.data import sources, streaming
from jaxformers.data.sentencepiece_vocab import train_sentencepiece
from jaxformers.data.wordpiece import train_wordpiece
from jaxformers.objectives import mlm_nsp, span_corruption
from jaxformers.tasks import base
from jaxformers.tasks.mlm_nsp import documents as memory_documents

BERT_ARGS = dict(
    max_seq_length=64,
    max_predictions_per_seq=10,
    masked_lm_prob=0.15,
    short_seq_prob=0.1,
    do_whole_word_mask=False,
)


def play_documents(n_chars: int, size: int = 1500) -> list[str]:
    """The embedded plays as plain text, cut at line breaks into documents of about ``size``."""
    docs, text = [], ""
    for path in sources.shakespeare_files():
        with open(path, encoding="utf-8") as f:
            text += sources.play_markdown_to_text(f.read())
        if len(text) >= n_chars:
            break
    text = text[:n_chars]
    while text:
        cut = text.find("\n", size)
        cut = len(text) if cut == -1 else cut + 1
        if text[:cut].strip():
            docs.append(text[:cut])
        text = text[cut:]
    return docs


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    """A folder of ~200 short documents (one file each) cut from the plays."""
    folder = tmp_path_factory.mktemp("docs")
    for i, doc in enumerate(play_documents(300_000)):
        (folder / f"doc{i:04d}.txt").write_text(doc, encoding="utf-8")
    return str(folder)


@pytest.fixture(scope="module")
def corpus(corpus_dir, data_dir):
    """{"train", "validation"} TFDS sources of the folder's documents."""
    return sources.prepare_local(corpus_dir, 0.1, data_dir)


@pytest.fixture(scope="module")
def wordpiece(corpus):
    return train_wordpiece(base.source_texts(corpus["train"])(), vocab_size=1000)


@pytest.fixture(scope="module")
def spiece(corpus, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("spiece") / "spiece"
    return train_sentencepiece(list(base.source_texts(corpus["train"])()), prefix, vocab_size=400)


def bert_per_doc(src, tok, seed=3, dupe_factor=2, dynamic=False, **cache):
    docs = streaming.LazyDocuments(src, streaming.WordPieceSentences(tok), **cache)
    return streaming.BertDocument(docs, tok.vocab, seed, dupe_factor, dynamic, **BERT_ARGS)


def take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def assert_same_examples(got, want):
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert sorted(g) == sorted(w), k
        for key in w:
            np.testing.assert_array_equal(np.asarray(g[key]), np.asarray(w[key]), err_msg=key)


# ------------------------------------------------------------------------------------- BERT


@pytest.mark.parametrize("cache", ["whole corpus", "one document"])
def test_bert_stream_is_the_per_document_algorithm(corpus, wordpiece, cache):
    """The pipeline's instances, visit by visit, are exactly google-research/bert's per-document
    algorithm run on the in-memory tokenized corpus with each document's own random stream.

    Random B segments read documents not in the token cache sentence by sentence (only the
    sentences they use are tokenized); with caches of one document every read takes that path
    and every sentence boundary is recomputed."""
    src = corpus["train"]
    seed, dupe_factor = 3, 2
    small = dict(cache_tokens=1, cache_spans=1) if cache == "one document" else {}
    per_doc = bert_per_doc(src, wordpiece, seed, dupe_factor, **small)
    visits = streaming.visits(len(src), seed, 0, 1)
    n = 400
    got = take(streaming.example_stream(visits.map(per_doc)), n)

    # The reference: the in-memory documents (as the in-memory path builds them) and the
    # unchanged per-document routine of create_instances.
    mv = mlm_nsp.MaskingVocab.from_tokens(wordpiece.vocab)
    docs = mlm_nsp._documents_to_ids(memory_documents(src, wordpiece), mv)
    assert len(docs) == len(src)  # no empty documents: indices agree
    want, k = [], 0
    while len(want) < n:
        epoch, d = visits[k]
        k += 1
        rng = random.Random(mlm_nsp.document_seed(seed, epoch % dupe_factor, d))
        want += mlm_nsp._instances_from_document(
            docs,
            d,
            BERT_ARGS["max_seq_length"],
            BERT_ARGS["short_seq_prob"],
            BERT_ARGS["masked_lm_prob"],
            BERT_ARGS["max_predictions_per_seq"],
            False,
            mv,
            rng,
        )
    assert_same_examples(got, want[:n])
    # Host shards: disjoint documents, together every document once per epoch.
    shards = [{d for _, d in streaming.visits(len(src), seed, p, 3)[:100]} for p in range(3)]
    assert set.union(*shards) == set(range(len(src))) and sum(map(len, shards)) == len(src)


def test_random_b_reads_tokenize_only_the_sentences_used(corpus, wordpiece):
    """A document read for a random B is the whole document's tokens, sentence for sentence,
    yet only the sentences read are tokenized; sentences that give no token (only format or
    combining characters) are dropped as the whole-document path drops them."""
    calls = []

    class Counting(streaming.WordPieceSentences):
        def encode(self, sentence):
            calls.append(sentence)
            return super().encode(sentence)

    to_sentences = Counting(wordpiece)
    odd = 'Fair sir. \u200b\u200b\n\n"Hark\u0301, 1 2 3! _ Yes. \u0301\u0301'
    for text in [odd, "\u200b", "", *base.source_texts(corpus["train"])()][:40]:
        whole = [s for s in to_sentences(text) if s]
        assert [text[a:b] for a, b in to_sentences.spans(text)] == [
            s for s in mlm_nsp.sentence_split(text) if wordpiece.encode_batch([s])[0]
        ]
        assert [to_sentences.encode(text[a:b]) for a, b in to_sentences.spans(text)] == whole
    docs = streaming.LazyDocuments(corpus["train"], to_sentences, cache_tokens=1)
    assert docs.sentences(0) is docs[0]  # whole, until the cache first overflows
    docs[1]  # overflows: docs[0] is evicted
    text = streaming.record_text(corpus["train"][5])
    no_word = [s for s in mlm_nsp.sentence_split(text) if not any(c.isalnum() for c in s)]
    calls.clear()
    view = docs.sentences(5)  # boundaries; only sentences without a letter or digit tokenized
    assert calls == no_word and len(view) == len(docs[5]) > 3
    calls.clear()
    assert list(view[2]) == list(docs[5][2]) and len(calls) == 1


def test_bert_stream_statistics_match_in_memory(corpus, wordpiece):
    """Over one pass, the streamed instances have the in-memory path's masked share and
    random-next share (above 0.5, 0.64 on these ~1.5 KB documents: a chunk of one sentence always
    takes a random B; DESIGN notes ~0.57 on its short documents)."""
    src = corpus["train"]
    per_doc = bert_per_doc(src, wordpiece, seed=5, dupe_factor=1)
    streamed = [inst for d in range(len(src)) for inst in per_doc((0, d))]
    memory = mlm_nsp.create_instances(
        memory_documents(src, wordpiece), wordpiece.vocab, seed=5, **BERT_ARGS
    )

    def stats(insts):
        masked = sum(float(i["masked_lm_weights"].sum()) for i in insts)
        tokens = sum(int(i["input_mask"].sum()) for i in insts)
        return masked / tokens, float(np.mean([int(i["next_sentence_labels"]) for i in insts]))

    (m_s, r_s), (m_m, r_m) = stats(streamed), stats(memory)
    n_s, n_m = len(streamed), len(memory)
    print(f"\nstream {n_s} masked {m_s:.4f} random-next {r_s:.4f}")
    print(f"memory {n_m} masked {m_m:.4f} random-next {r_m:.4f}")
    # The same documents, chunked by the same rule: the counts agree up to the random short
    # targets and the random B lengths.
    assert abs(n_s - n_m) <= 0.05 * n_m
    # Masked share: round(0.15 * length) per instance, a near-deterministic quantity.
    assert abs(m_s - m_m) <= 0.005
    # Random-next share: two binomial estimates; 4 standard errors of their difference.
    sd = np.sqrt(r_m * (1 - r_m) * (1 / n_s + 1 / n_m))
    assert abs(r_s - r_m) <= 4 * sd
    assert 0.5 < r_s < 0.7 and 0.5 < r_m < 0.7


# --------------------------------------------------------------------------------------- T5


def test_t5_stream_is_span_corrupt_then_greedy_packing(corpus, spiece):
    """Rows from grain's first-fit packing (one bin) equal ``pack_examples`` of ``span_corrupt``
    run on the same chunks of the same documents."""
    src = corpus["train"]
    T, seed = 64, 7
    raw, S = span_corruption.chunk_lengths(T)
    per_doc = streaming.SpanDocument(src, spiece, raw, seed)
    visits = streaming.visits(len(src), seed, 0, 1)
    pack = lambda ds: streaming.pack_t5(ds, T, S, spiece.pad_id)  # noqa: E731
    n = 60
    got = take(streaming.example_stream(visits.map(per_doc), pack=pack), n)

    examples, k = [], 0
    while sum(len(e["inputs"]) for e in examples) < (n + 2) * T:
        epoch, d = visits[k]
        k += 1
        tokens = np.asarray(spiece.encode(sources.record_text(src[d])))
        for c, start in enumerate(range(0, len(tokens), raw)):
            chunk = tokens[start : start + raw]
            if len(chunk) >= 2:
                examples.append(
                    span_corruption.span_corrupt(
                        chunk, spiece.vocab_size, seed=(seed, epoch, d, c), eos_id=spiece.eos_id
                    )
                )
    rows = span_corruption.pack_examples(examples, T, S, spiece.pad_id)
    want = [{key: rows[key][r] for key in got[0]} for r in range(n)]
    assert_same_examples(got, want)


# ------------------------------------------------------------------------------- state, resume


def bert_train_stream(corpus, tok, workers=0, window=50):
    src = corpus["train"]
    docs = streaming.visits(len(src), 11, 0, 1).map(bert_per_doc(src, tok, 11, 1, dynamic=True))
    return streaming.TrainStream(
        lambda: streaming.example_stream(docs, window, 11, None, workers),
        12,
        accum=2,
        workers=workers,
    )


def t5_train_stream(corpus, tok, workers=0, window=30):
    src = corpus["train"]
    raw, S = span_corruption.chunk_lengths(32)
    docs = streaming.visits(len(src), 4, 0, 1).map(streaming.SpanDocument(src, tok, raw, 4))
    pack = lambda ds: streaming.pack_t5(ds, 32, S, tok.pad_id)  # noqa: E731
    return streaming.TrainStream(
        lambda: streaming.example_stream(docs, window, 4, pack, workers), 8, workers=workers
    )


def check_resume(make, k=5, more=6):
    """Stopping after k batches and restoring the saved state (through JSON, as a checkpoint
    holds it) gives the batches an uninterrupted stream gives."""
    full = make()
    want = [full.batch(s) for s in range(k + more)]
    first = make()
    for s in range(k):
        first.batch(s)
    saved = streaming.json_state(first.get_state())
    first.close()
    resumed = make()
    streaming.DataState(target=resumed).set_state(json.dumps(saved).encode())
    got = [resumed.batch(s) for s in range(k, k + more)]
    resumed.close()
    full.close()
    for g, w in zip(got, want[k:]):
        assert sorted(g) == sorted(w)
        for key in w:
            np.testing.assert_array_equal(g[key], w[key])
    return want


def test_resume_from_saved_state_is_exact(corpus, wordpiece, spiece):
    want = check_resume(lambda: bert_train_stream(corpus, wordpiece))
    assert want[0]["input_ids"].shape == (2, 6, 64)  # [A, b, T]
    assert len({b["input_ids"].tobytes() for b in want}) == len(want)
    check_resume(lambda: t5_train_stream(corpus, spiece))


def test_shards_on_one_host_are_the_hosts_rows_side_by_side(corpus, wordpiece):
    """``data.stream_shards``: one host drawing shards 0 and 1 gives the global batch that two
    hosts with one shard each give together (rows side by side in every microbatch), and its
    saved state (one grain state per shard) resumes exactly."""
    src = corpus["train"]
    per_doc = bert_per_doc(src, wordpiece, 11, 1, dynamic=True)

    def make(shard):
        docs = streaming.visits(len(src), 11, shard, 2).map(per_doc)
        return lambda: streaming.example_stream(docs, 50, 11, None, 0)

    one = lambda: streaming.TrainStream([make(0), make(1)], 12, accum=2)  # noqa: E731
    hosts = [streaming.TrainStream(make(p), 12, 2, p, 2) for p in range(2)]
    want = check_resume(one, k=2, more=2)
    for step, w in enumerate(want):
        parts = [h.batch(step) for h in hosts]
        assert w["input_ids"].shape == (2, 6, 64) and parts[0]["input_ids"].shape == (2, 3, 64)
        for key in w:
            np.testing.assert_array_equal(w[key], np.concatenate([p[key] for p in parts], 1))
    assert not np.array_equal(parts[0]["input_ids"], parts[1]["input_ids"])
    with pytest.raises(ValueError, match="3 data shards .* choose a multiple of 6"):
        streaming.TrainStream([make(0)] * 3, 8, accum=2)
    with pytest.raises(ValueError, match="of 2 data shard"):
        streaming.TrainStream(make(0), 12, accum=2).set_state(streaming.json_state(
            {"batches": 1, "grain": [{}, {}], "workers": 0}))  # fmt: skip


@pytest.mark.slow
def test_workers_give_the_same_stream_and_resume(corpus, wordpiece, spiece):
    """Worker processes (grain's mp_prefetch) change nothing in the batches, and their state
    restores exactly; skip_to (no saved state) reaches the same place."""
    want = check_resume(lambda: bert_train_stream(corpus, wordpiece, workers=2))
    two = bert_train_stream(corpus, wordpiece, workers=2)
    two.batch(0)
    saved_with_two = streaming.json_state(two.get_state())
    two.close()
    inline = bert_train_stream(corpus, wordpiece, workers=0)
    for s, w in enumerate(want):
        got = inline.batch(s)
        for key in w:
            np.testing.assert_array_equal(got[key], w[key])
    check_resume(lambda: t5_train_stream(corpus, spiece, workers=1))
    skipped = bert_train_stream(corpus, wordpiece, workers=1)
    with pytest.raises(ValueError, match="data.worker_count=1"):  # a state of 2 workers
        skipped.set_state(saved_with_two)
    skipped.skip_to(7)
    got = skipped.batch(7)
    skipped.close()
    np.testing.assert_array_equal(got["input_ids"], want[7]["input_ids"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "t5"])
def test_trainer_saves_the_stream_position_and_resumes_exactly(tmp_path, corpus_dir, name):
    """A run stopped after 2 steps and resumed (grain state read back from the checkpoint, two
    worker processes) has the losses of an uninterrupted run without workers, bit for bit."""
    path = os.path.join(ROOT, "experiments", f"{name}_shakespeare.py")
    sets = [f"data.corpus={corpus_dir}", "steps=4", "log_every=1", "progress=false"]
    exp = config.apply_overrides(config.load_experiment(path, "tiny"), [*sets, "peak_tflops=1.0"])
    full = train.Trainer(exp, str(tmp_path / "full")).run()
    workers = config.apply_overrides(exp, ["data.worker_count=2"])
    wd = tmp_path / "wd"
    # the same tokenizer (WordPiece training is not deterministic: huggingface/tokenizers#1794)
    shutil.copytree(tmp_path / "full" / "tokenizer", wd / "tokenizer")
    first = train.Trainer(workers, str(wd)).run(stop_at=2)
    assert (wd / "checkpoints" / "2" / "data" / "process_0-of-1.json").is_file()
    second = train.Trainer(workers, str(wd)).run()
    assert second.steps_run == 2
    assert {**first.train_losses, **second.train_losses} == full.train_losses
    assert len(set(full.train_losses.values())) == 4


def test_eval_stream_reads_every_example_once_and_pads(corpus, wordpiece):
    src = corpus["validation"]
    per_doc = bert_per_doc(src, wordpiece, 2, 1)
    docs = streaming.visits(len(src), None).map(per_doc)
    every = [i for d in range(len(src)) for i in per_doc((0, d))]
    hosts = [
        streaming.EvalStream(lambda: streaming.example_stream(docs), 10, p, 2) for p in range(2)
    ]
    n = hosts[0].num_batches
    assert n == -(-len(every) // 10) and hosts[1].batches_up_to(2) == 2
    rows = [
        np.concatenate([h.batch(i)["input_ids"][0] for h in hosts]) for i in range(n)
    ]  # host 0's rows, then host 1's: the global batch
    ids = np.concatenate(rows)
    np.testing.assert_array_equal(ids[: len(every)], np.stack([i["input_ids"] for i in every]))
    assert not ids[len(every) :].any()  # padding rows: all zero, weighed 0 by the task


# --------------------------------------------------------------------------- tokenizer sample


def test_tokenizer_sample_is_bounded_fixed_and_whole_when_small(corpus):
    src = corpus["train"]
    whole = list(base.source_texts(src)())
    size = sum(len(t.encode()) for t in whole)
    assert list(base.sample_texts(src, size + 1)) == whole  # under the cap: all, in order
    cap = size // 5
    a, b = list(base.sample_texts(src, cap)), list(base.sample_texts(src, cap))
    assert a == b and sum(len(t.encode()) for t in a) <= cap
    assert sum(len(t.encode()) for t in a) > cap - 2000  # filled up to the cap
    # a spread of the corpus, not its beginning
    assert a[-1] not in whole[: len(a) + 5]


def test_experiments_stream():
    """The four pretraining experiments read their examples through the streaming path."""
    import inspect

    for name in ("bert_base_wikipedia", "bert_shakespeare", "t5_small_c4", "t5_shakespeare"):
        exp = config.load_experiment(os.path.join(ROOT, "experiments", f"{name}.py"))
        assert "stream_data(" in inspect.getsource(type(exp.task).build_data), name


# ------------------------------------------------------------------------------ Apache Beam


def test_beam_builders_name_the_extra(tmp_path):
    """c4 and wikipedia are Beam builders: an unprepared one says what to install and how to
    build it; without Apache Beam, its pipeline options name the extra."""
    assert sources.needs_beam("c4/en:3.1.0") and sources.needs_beam("wikipedia/20230601.en")
    assert not sources.needs_beam("lm1b")
    with pytest.raises(RuntimeError, match=r"jaxformers\[tf,beam\].*beam_pipeline_options"):
        sources.catalog_source("c4/en", str(tmp_path))
    try:
        import apache_beam  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match=r"pip install 'jaxformers\[beam\]'"):
            sources.beam_options("direct_num_workers=2")
    else:
        opts = sources.beam_options("direct_num_workers=2").get_all_options()
        assert opts["runner"] == "DirectRunner" and opts["direct_num_workers"] == 2
