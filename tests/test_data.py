"""Data: local text through TFDS, the embedded corpus, byte-level BPE tokenizers, token files and
the index-based batches (determinism, epochs, host sharding, accumulation layout)."""

import dataclasses
import os

import numpy as np
import pytest
from helpers import FUZZ, play_excerpt
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxformers.config import DataConfig, Experiment
from jaxformers.data import pipeline, sources
from jaxformers.data.pipeline import LMBatches
from jaxformers.data.tokenizers import EOS_TOKEN, BPETokenizer, train_bpe
from jaxformers.models.gpt2 import GPT2Config
from jaxformers.tasks import CausalLM


def prepare(spec, val_fraction, data_dir):
    return sources.prepare_local(spec, val_fraction, data_dir)


def records(source):
    out = {}
    for i in range(len(source)):
        r = source[i]
        out[sources.record_text({"text": r["id"]})] = sources.record_text(r)
    return out


DOCS = {
    "a.txt": (
        "First line of a.\nSecond line, with ünïcödé and 東京.\nThird.\nFourth line here.\n"
        "Fifth and last line of a.\n"
    ),
    "b.txt": "".join(f"b line {i}: " + "word " * (i % 7) + "\n" for i in range(60)),
    "sub/c.txt": "one long line without any line break at all, " * 20,
    "d.md": "# Heading\n\nSome *markdown* text.\n" * 10,
}


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("texts")
    for name, text in DOCS.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    (root / "ignored.bin").write_bytes(b"\x00\x01")
    return str(root)


def test_local_folder_splits_reassemble_documents(text_folder, data_dir):
    srcs = prepare(text_folder, 0.2, data_dir)
    train, val = records(srcs["train"]), records(srcs["validation"])
    assert sorted(train) == sorted(
        os.path.basename(n) for n in DOCS
    )  # .txt and .md, recursive; not .bin
    for name, text in DOCS.items():
        base = os.path.basename(name)
        assert train[base] + val.get(base, "") == text
        assert val.get(base, "") == sources.split_document(text, 0.2)[1]
    # Held-out parts are real, and cut at a line break where there is one.
    assert val["b.txt"] and val["b.txt"].startswith("b line ") and train["b.txt"].endswith("\n")
    assert 0.15 * len(DOCS["b.txt"]) <= len(val["b.txt"]) <= 0.2 * len(DOCS["b.txt"])


def test_local_single_file_and_glob(text_folder, data_dir):
    one = prepare(os.path.join(text_folder, "a.txt"), 0.3, data_dir)
    assert len(one["train"]) == 1
    assert sources.resolve_paths(os.path.join(text_folder, "*.txt")) == [
        os.path.join(text_folder, "a.txt"),
        os.path.join(text_folder, "b.txt"),
    ]
    assert sources.resolve_paths(os.path.join(text_folder, "**", "*.txt")) == sorted(
        os.path.join(text_folder, n) for n in ("a.txt", "b.txt", "sub/c.txt")
    )


def test_prepare_local_twice_in_one_process(tmp_path, data_dir):
    """A notebook or a test session prepares several corpora (or one twice) in one process
    (regression: the TFDS builder class was defined and registered anew on every call)."""
    for i in (0, 1, 0):
        p = tmp_path / f"doc{i}.txt"
        p.write_text(f"document {i}\n" * 40)
        srcs = sources.prepare_local(str(p), 0.1, data_dir)
        assert records(srcs["train"])[p.name].startswith(f"document {i}\n")


def test_split_document_examples():
    assert sources.split_document("a\nb\nc\nd\n", 0.5) == ("a\nb\nc\n", "d\n")
    assert sources.split_document("abcdefghij", 0.3) == (
        "abcdefg",
        "hij",
    )  # no line break: cut mid-line
    assert sources.split_document("abc\n", 0.0) == ("abc\n", "")
    assert sources.split_document("x", 0.5) == ("x", "")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from("ab \n\u00e9\u6771"), max_size=200), st.floats(0.01, 0.9))
def test_split_document_properties(text, frac):
    train, val = sources.split_document(text, frac)
    assert train + val == text
    if len(text) >= 2:
        cut = int(len(text) * (1 - frac))
        assert len(train) >= cut
        if "\n" in text[cut:]:
            # Cut just after the first line break at or after the nominal cut.
            assert train.endswith("\n") and "\n" not in text[cut : len(train) - 1]
        else:
            assert len(train) == cut


MARKDOWN = """# Romeo and Juliet

## ACT II

### SCENE II. Capulet's orchard.

_Enter ROMEO_

**ROMEO**\x20\x20
But, soft\\! what light through yonder window breaks?\x20\x20
It is the east, and Juliet is the sun.



**JULIET**\x20\x20
Ay me\\!

_Exit_
"""

EXPECTED = """Romeo and Juliet

ACT II

SCENE II. Capulet's orchard.

[Enter ROMEO]

ROMEO:
But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.

JULIET:
Ay me!

[Exit]
"""


def test_play_markdown_to_text():
    assert sources.play_markdown_to_text(MARKDOWN) == EXPECTED


@pytest.mark.slow
def test_embedded_corpus(data_dir):
    srcs = prepare("shakespeare", 0.05, data_dir)
    train, val = records(srcs["train"]), records(srcs["validation"])
    assert len(train) >= 30 and len(val) == len(train)
    assert len(train) == len(sources.shakespeare_files())
    romeo = next(t for n, t in train.items() if "romeo" in n)
    assert "ROMEO:\n" in romeo and "**" not in romeo
    total = sum(len(t) for t in train.values()) + sum(len(t) for t in val.values())
    assert total > 4_000_000
    assert 0.04 < sum(len(t) for t in val.values()) / total < 0.06


def test_missing_corpus_path(tmp_path):
    missing = str(tmp_path / "no_such_corpus.txt")
    with pytest.raises(FileNotFoundError, match="no_such_corpus.txt"):
        sources.text_sources(missing, 0.1, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        sources.text_sources(str(tmp_path / "*.txt"), 0.1, str(tmp_path))


def test_unprepared_tfds_name(tmp_path):
    with pytest.raises(RuntimeError) as e:
        sources.text_sources("tfds:jaxformers_no_such_dataset", 0.1, str(tmp_path))
    msg = str(e.value)
    assert "jaxformers_no_such_dataset" in msg and "tfds build" in msg and "local files" in msg


# ------------------------------------------------------------------------------------- tokenizers

UNICODE_TEXTS = [
    "ROMEO: But, soft! what light through yonder window breaks?",
    "naïve café, Crème brûlée; Ἐν ἀρχῇ ἦν ὁ λόγος; 東京は日本の首都です 😀🚀",
    "  leading spaces,\ttabs\r\nand\n\nblank lines  ",
    "zero\u200bwidth\u00a0nbsp \ufeff and combining e\u0301",
    "",
]


@pytest.fixture(scope="module")
def play_text():
    return play_excerpt(30_000)


@pytest.fixture(scope="module")
def trained(play_text):
    return train_bpe([play_text], 400)


def test_train_bpe_round_trip(trained):
    assert trained.vocab_size == 400
    assert trained.eos_id == trained._tok.token_to_id(EOS_TOKEN)
    for text in UNICODE_TEXTS:
        ids = trained.encode(text)
        assert all(0 <= i < 400 for i in ids)
        assert trained.decode(ids) == text
    # Merges learned: common words are shorter than their bytes.
    assert len(trained.encode(" the")) == 1
    assert trained.encode_batch(UNICODE_TEXTS[:2]) == [trained.encode(t) for t in UNICODE_TEXTS[:2]]


def test_train_bpe_too_small_vocab(play_text):
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_bpe([play_text], 100)


def test_tokenizer_save_and_load_json(trained, tmp_path):
    trained.save(str(tmp_path))
    back = BPETokenizer.load(str(tmp_path))
    for text in UNICODE_TEXTS:
        assert back.encode(text) == trained.encode(text)
    assert back.eos_id == trained.eos_id


@pytest.fixture(scope="module")
def vocab_merges(trained, tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2_files")
    trained._tok.model.save(str(d))
    assert os.path.isfile(d / "vocab.json") and os.path.isfile(d / "merges.txt")
    return str(d)


def test_vocab_merges_load_equals_transformers(vocab_merges, trained, transformers):
    ref = transformers.GPT2TokenizerFast.from_pretrained(vocab_merges)
    ours = BPETokenizer.load(os.path.join(vocab_merges, "vocab.json"))
    ours_dir = BPETokenizer.load(vocab_merges)
    assert ours.vocab_size == len(ref) == 400
    assert ours.eos_id == ref.eos_token_id
    for text in UNICODE_TEXTS:
        ids = ours.encode(text)
        assert ids == ref(text)["input_ids"], text
        assert ids == ours_dir.encode(text) == trained.encode(text)
        assert ours.decode(ids) == ref.decode(ids) == text


def test_vocab_merges_endoftext_is_one_token(vocab_merges, trained, transformers):
    """'<|endoftext|>' in text is the EOS token for transformers' GPT-2 tokenizer and for a trained
    tokenizer.json; loading vocab.json + merges.txt must agree."""
    ref = transformers.GPT2TokenizerFast.from_pretrained(vocab_merges)
    ours = BPETokenizer.load(os.path.join(vocab_merges, "vocab.json"))
    text = "to be<|endoftext|>or not"
    assert trained.encode(text).count(trained.eos_id) == 1
    assert ours.encode(text) == ref(text)["input_ids"] == trained.encode(text)


def test_tokenizer_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor vocab.json"):
        BPETokenizer.load(str(tmp_path))
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        BPETokenizer.load(str(tmp_path / "vocab.json"))


@pytest.mark.parametrize("encode_chars", [1 << 20, 20])
def test_token_file_is_documents_joined_by_eos(trained, tmp_path, monkeypatch, encode_chars):
    """Also when the text is tokenized in several calls (``ENCODE_CHARS`` of text each)."""
    monkeypatch.setattr(pipeline, "ENCODE_CHARS", encode_chars)
    docs = ["first document.\n", "ünïcödé second", "", "third one\n\n"]
    path = str(tmp_path / "tokens.bin")
    toks = pipeline.token_file(
        iter(docs), trained.encode_batch, trained.eos_id, path, trained.vocab_size
    )
    want = [i for d in docs for i in trained.encode(d) + [trained.eos_id]]
    assert toks.dtype == np.uint16
    assert toks.tolist() == want
    # Written once: a second call reads the file instead of re-tokenizing.
    again = pipeline.token_file(
        iter(["other"]), trained.encode_batch, trained.eos_id, path, trained.vocab_size
    )
    assert again.tolist() == want


def test_token_file_reads_by_position_like_the_array(tmp_path):
    """TokenFile (positioned reads, no mapping) gives what the whole array gives, also after
    pickling into a worker."""
    import pickle

    ref = np.random.default_rng(0).integers(0, 65535, 4099).astype(np.uint16)
    ref.tofile(tmp_path / "t.bin")
    toks = pipeline.TokenFile(str(tmp_path / "t.bin"), np.uint16)
    assert len(toks) == len(ref) and toks.dtype == np.uint16
    for a, b in [(0, 7), (4090, 5000), (-5, None), (100, 50), (None, None)]:
        np.testing.assert_array_equal(toks[a:b], ref[a:b])
    assert toks[-1] == ref[-1] and toks[17] == ref[17]
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(toks))[33:77], ref[33:77])
    with pytest.raises(IndexError):
        toks[len(ref)]


# ------------------------------------------------------------------------------------- batches

SEQ = 5


def arange_tokens(n_windows):
    """Window i starts with token i * SEQ: the first input token names the window."""
    return np.arange(n_windows * SEQ + 1, dtype=np.int64)


def window_ids(batch):
    return (batch["inputs"][..., 0] // SEQ).astype(int)


def test_windows_inputs_targets_shifted():
    b = LMBatches(arange_tokens(24), SEQ, 8, seed=0)
    batch = b.batch(0)
    assert batch["inputs"].shape == batch["targets"].shape == (1, 8, SEQ)
    assert batch["inputs"].dtype == np.int32
    np.testing.assert_array_equal(batch["targets"], batch["inputs"] + 1)
    np.testing.assert_array_equal(batch["inputs"][..., 1:], batch["targets"][..., :-1])
    # Windows tile the stream: window i covers tokens [i*SEQ, i*SEQ + SEQ].
    np.testing.assert_array_equal(
        batch["inputs"] % SEQ, np.broadcast_to(np.arange(SEQ), (1, 8, SEQ))
    )


def test_every_window_once_per_epoch_and_reshuffled():
    n = 24
    b = LMBatches(arange_tokens(n), SEQ, 8, seed=3)
    assert b.num_windows == n
    epochs = [
        np.concatenate([window_ids(b.batch(s)).ravel() for s in range(e * 3, e * 3 + 3)])
        for e in range(3)
    ]
    for ids in epochs:
        assert sorted(ids.tolist()) == list(range(n))
    assert epochs[0].tolist() != list(range(n))  # shuffled
    assert epochs[0].tolist() != epochs[1].tolist()  # and differently in the next epoch


def test_batches_deterministic_by_seed():
    toks = arange_tokens(40)
    a, a2, b = (
        LMBatches(toks, SEQ, 8, seed=1),
        LMBatches(toks, SEQ, 8, seed=1),
        LMBatches(toks, SEQ, 8, seed=2),
    )
    for step in (0, 1, 7, 2):  # any order: batch `step` is a pure function of step
        np.testing.assert_array_equal(a.batch(step)["inputs"], a2.batch(step)["inputs"])
    assert any(not np.array_equal(a.batch(s)["inputs"], b.batch(s)["inputs"]) for s in range(3))
    ev = LMBatches(toks, SEQ, 8, seed=None)  # evaluation: file order
    assert window_ids(ev.batch(1)).ravel().tolist() == list(range(8, 16))


@pytest.mark.parametrize("accum", [1, 2])
def test_host_sharding_partitions_the_global_batch(accum):
    toks = arange_tokens(64)
    whole = LMBatches(toks, SEQ, 8, seed=5, accum=accum)
    hosts = [
        LMBatches(toks, SEQ, 8, seed=5, accum=accum, process_index=p, process_count=2)
        for p in range(2)
    ]
    for step in range(3):
        full = window_ids(whole.batch(step))  # [A, 8 / A]
        parts = [window_ids(h.batch(step)) for h in hosts]  # [A, 4 / A] each
        assert all(p.shape == (accum, 4 // accum) for p in parts)
        assert not set(parts[0].ravel()) & set(parts[1].ravel())
        # Same microbatch contents whatever the host count; host p holds its slice of each.
        for a in range(accum):
            assert sorted(np.concatenate([parts[0][a], parts[1][a]]).tolist()) == sorted(
                full[a].tolist()
            )
            np.testing.assert_array_equal(np.concatenate([parts[0][a], parts[1][a]]), full[a])


def test_accumulation_layout_is_microbatch_major():
    toks = arange_tokens(64)
    one = LMBatches(toks, SEQ, 8, seed=4, accum=1).batch(2)
    two = LMBatches(toks, SEQ, 8, seed=4, accum=2).batch(2)
    four = LMBatches(toks, SEQ, 8, seed=4, accum=4).batch(2)
    assert two["inputs"].shape == (2, 4, SEQ) and four["inputs"].shape == (4, 2, SEQ)
    for k in ("inputs", "targets"):
        np.testing.assert_array_equal(two[k].reshape(1, 8, SEQ), one[k])
        np.testing.assert_array_equal(four[k].reshape(1, 8, SEQ), one[k])


def test_batch_errors():
    with pytest.raises(ValueError, match="multiple of 4"):
        LMBatches(arange_tokens(10), SEQ, 6, accum=2, process_count=2)
    with pytest.raises(ValueError, match="fewer than one sequence"):
        LMBatches(np.arange(5), SEQ, 2)


# ------------------------------------------------------------------------------------- lm_data


def lm_experiment(corpus, vocab=512, data_vocab=0, seq_len=16, val_fraction=0.1):
    return Experiment(
        name="data_test",
        model=GPT2Config(vocab_size=vocab, n_positions=32, n_embd=32, n_layer=1, n_head=2),
        data=DataConfig(
            corpus=corpus,
            tokenizer="bpe",
            vocab_size=data_vocab,
            seq_len=seq_len,
            val_fraction=val_fraction,
        ),
        batch_size=4,
    )


@pytest.fixture(scope="module")
def play_file(tmp_path_factory, play_text):
    p = tmp_path_factory.mktemp("play") / "play.txt"
    p.write_text(play_text, encoding="utf-8")
    return str(p)


def test_lm_data_end_to_end(play_file, play_text, tmp_path, data_dir):
    d = CausalLM().build_data(lm_experiment(play_file, data_vocab=300), str(tmp_path))
    assert d.tokenizer.vocab_size == 300
    assert os.path.isfile(tmp_path / "tokenizer" / "tokenizer.json")
    train_text, val_text = sources.split_document(play_text, 0.1)
    assert d.train.windows.tokens.tolist() == d.tokenizer.encode(train_text) + [d.tokenizer.eos_id]
    assert d.val.windows.tokens.tolist() == d.tokenizer.encode(val_text) + [d.tokenizer.eos_id]
    b = d.train_batch(0)
    assert b["inputs"].shape == (1, 4, 16) and int(b["inputs"].max()) < 300


def test_lm_data_tokenizer_larger_than_model(play_file, tmp_path, data_dir):
    with pytest.raises(ValueError, match="vocab_size") as e:
        CausalLM().build_data(lm_experiment(play_file, vocab=300, data_vocab=400), str(tmp_path))
    assert "400" in str(e.value) and "300" in str(e.value)


def test_lm_data_other_errors(play_file, tmp_path, data_dir):
    with pytest.raises(ValueError, match="seq_len=40"):
        CausalLM().build_data(lm_experiment(play_file, seq_len=40), str(tmp_path / "a"))


def test_lm_data_without_validation_text(play_file, tmp_path, data_dir):
    """val_fraction=0 without a validation corpus leaves no validation text: a clear ValueError
    that names the fix, not TFDS's AssertionError('No examples were yielded')."""
    with pytest.raises(ValueError, match="val_fraction.*data.val_corpus"):
        CausalLM().build_data(lm_experiment(play_file, val_fraction=0.0), str(tmp_path / "b"))


@pytest.mark.parametrize("val_fraction", [0.0, 0.1])
def test_val_corpus_is_the_validation_split_and_train_is_whole(
    text_folder, tmp_path, data_dir, val_fraction
):
    """data.val_corpus: train on every document whole, validate on the other corpus as is."""
    srcs = sources.text_sources(
        text_folder, val_fraction, data_dir, val_corpus=os.path.join(text_folder, "b.txt")
    )
    train = records(srcs["train"])
    assert {os.path.basename(k) for k in train} == {"a.txt", "b.txt", "c.txt", "d.md"}
    assert train["a.txt"] == DOCS["a.txt"]
    assert records(srcs["validation"]) == {"b.txt": DOCS["b.txt"]}


def test_val_corpus_end_to_end_and_exactly_once_eval(play_file, play_text, tmp_path, data_dir):
    """A train file and a validation file: the token streams are the files' own, and the eval
    batches score every validation token after the first exactly once, in order."""
    val = tmp_path / "val.txt"
    val_text = "ROMEO:\nBut soft, what light through yonder window breaks?\n" * 7
    val.write_text(val_text)
    exp = lm_experiment(play_file, data_vocab=300, val_fraction=0.0)
    exp = dataclasses.replace(exp, data=dataclasses.replace(exp.data, val_corpus=str(val)))
    d = CausalLM().build_data(exp, str(tmp_path / "w"))
    tok = d.tokenizer
    assert d.train.windows.tokens.tolist() == tok.encode(play_text) + [tok.eos_id]
    val_tokens = tok.encode(val_text) + [tok.eos_id]
    assert d.val.windows.tokens.tolist() == val_tokens
    scored = []
    for i in range(d.val.num_batches):
        b = d.eval_batch(i)
        t, x = b["targets"][0], b["inputs"][0]
        assert x.min() >= 0  # inputs stay valid ids under the padding
        scored += [int(v) for row in t for v in row if v >= 0]
    assert scored == val_tokens[1:]
    assert (d.val.num_batches - 1) * 4 * 16 < len(val_tokens) - 1 <= d.val.num_batches * 4 * 16


@given(
    n=st.integers(2, 90),
    T=st.integers(1, 9),
    B=st.sampled_from([1, 2, 4]),
    pc=st.sampled_from([1, 2]),
)
@FUZZ
def test_fuzz_eval_windows_score_each_token_once(n, T, B, pc):
    """Over every host's eval batches, each token after the first is a target exactly once, with
    the tokens before it as its inputs (the window it sits in)."""
    tokens = np.arange(100, 100 + n, dtype=np.uint16)
    hosts = [LMBatches(tokens, T, B * pc, None, 1, p, pc, pad=True) for p in range(pc)]
    seen = []
    for step in range(hosts[0].num_batches):
        for h in hosts:
            b = h.batch(step)
            for x, t in zip(b["inputs"][0], b["targets"][0], strict=True):
                k = int(np.sum(t >= 0))
                assert np.all(t[k:] == -1) and np.all(x[1:k] == t[: max(k - 1, 0)])
                seen += t[:k].tolist()
    assert sorted(seen) == list(range(101, 100 + n))


@given(n=st.integers(1, 30), B=st.sampled_from([1, 2, 4, 8]), pc=st.sampled_from([1, 2]))
@FUZZ
def test_fuzz_example_batches_pad_reads_each_example_once(n, B, pc):
    source = [{"input_mask": np.ones(3, np.int32), "x": np.int32(i + 1)} for i in range(n)]
    hosts = [pipeline.ExampleBatches(source, B * pc, None, 1, p, pc, pad=True) for p in range(pc)]
    seen = []
    for step in range(hosts[0].num_batches):
        for h in hosts:
            b = h.batch(step)
            real = b["input_mask"][0, :, 0] > 0
            assert np.all(b["x"][0][~real] == 0)
            seen += b["x"][0][real].tolist()
    assert sorted(seen) == list(range(1, n + 1))


def test_local_corpus_prepared_quietly_into_the_workdir(tmp_path, monkeypatch, capfd):
    """No TFDS "Downloading ..." wording or absl warning for a local file; one line says what was
    prepared and where; the default place is the run's own WORKDIR/data/tfds."""
    monkeypatch.delenv("JAXFORMERS_DATA_DIR", raising=False)
    p = tmp_path / "mine.txt"
    p.write_text("".join(f"line {i} of my own text\n" for i in range(80)))
    cfg = DataConfig(corpus=str(p), val_fraction=0.1)
    work = tmp_path / "work"
    srcs = sources.run_sources(cfg, str(work))
    out = capfd.readouterr()
    text = out.out + out.err
    assert "ownload" not in text and "WARNING" not in text and "custom data" not in text
    assert text.count("prepared corpus") == 1 and str(work / "data" / "tfds") in text
    assert len(srcs["train"]) == 1 and len(srcs["validation"]) == 1
    sources.run_sources(cfg, str(work))  # already prepared: silent
    out = capfd.readouterr()
    assert out.out + out.err == ""


def test_corpus_whose_held_out_parts_are_blank(tmp_path, data_dir):
    """Every document's held-out tail is whitespace (so no validation record): a clear
    ValueError."""
    p = tmp_path / "short.txt"
    p.write_text("a" * 50 + "\n" + "   \n")
    assert sources.split_document(p.read_text(), 0.1)[1].strip() == ""
    with pytest.raises(ValueError, match="validation|val_fraction"):
        CausalLM().build_data(lm_experiment(str(p)), str(tmp_path / "w"))


# ------------------------------------------------------------------------------------- fuzzing


@pytest.fixture(scope="module")
def fuzz_bpe():
    """A BPE tokenizer trained on the lines of 20,000 characters of a play."""
    return train_bpe(play_excerpt(20_000).splitlines(), 400)


@FUZZ
@given(text=st.text(max_size=200))
def test_fuzz_bpe_round_trip(fuzz_bpe, text):
    ids = fuzz_bpe.encode(text)
    assert all(0 <= i < fuzz_bpe.vocab_size for i in ids)
    assert fuzz_bpe.decode(ids) == text


@FUZZ
@given(
    n=st.integers(0, 400),
    T=st.integers(1, 16),
    B=st.sampled_from([1, 2, 4, 8]),
    A=st.sampled_from([1, 2]),
    seed=st.one_of(st.none(), st.integers(0, 100)),
    step=st.integers(0, 50),
)
def test_fuzz_lm_batches(n, T, B, A, seed, step):
    toks = np.random.default_rng(n).integers(0, 1000, n + T + 1).astype(np.uint16)
    try:
        lb = LMBatches(toks, T, B, seed, A)
    except ValueError:
        assert B % A
        return
    b1, b2 = lb.batch(step), LMBatches(toks, T, B, seed, A).batch(step)
    assert b1["inputs"].shape == (A, B // A, T) and b1["targets"].shape == (A, B // A, T)
    np.testing.assert_array_equal(b1["inputs"], b2["inputs"])
    np.testing.assert_array_equal(b1["inputs"][..., 1:], b1["targets"][..., :-1])
    assert ((0 <= b1["inputs"]) & (b1["inputs"] < 1000)).all()
    # Every row is a window of the token stream.
    for row in np.concatenate([b1["inputs"], b1["targets"][..., -1:]], -1).reshape(-1, T + 1):
        assert any((toks[s : s + T + 1] == row).all() for s in range(0, len(toks) - T, T))


@FUZZ
@given(
    n=st.integers(1, 30),
    B=st.sampled_from([1, 2, 4]),
    seed=st.one_of(st.none(), st.integers(0, 9)),
    step=st.integers(0, 40),
)
def test_fuzz_example_batches(n, B, seed, step):
    src = [{"x": np.full(3, i, np.int32), "y": np.int32(i)} for i in range(n)]
    b = pipeline.ExampleBatches(src, B, seed).batch(step)
    b2 = pipeline.ExampleBatches(src, B, seed).batch(step)
    assert b["x"].shape == (1, B, 3) and b["y"].shape == (1, B)
    np.testing.assert_array_equal(b["x"], b2["x"])
    assert ((0 <= b["y"]) & (b["y"] < n)).all() and (b["x"][..., 0] == b["y"]).all()
    if seed is None:
        assert b["y"].reshape(-1).tolist() == [(step * B + j) % n for j in range(B)]


@FUZZ
@given(text=st.text(max_size=300), frac=st.floats(-1, 2))
def test_fuzz_sources(text, frac):
    sources.play_markdown_to_text(text)
    tr, va = sources.split_document(text, frac)
    assert tr + va == text


def test_val_corpus_from_a_tfds_split(text_folder, tmp_path, data_dir):
    """data.val_corpus=tfds:NAME:SPLIT reads that split of a prepared TFDS dataset whole (here a
    local corpus this project prepared, found by its registered builder name); a split it lacks
    is an error that lists the splits it has."""
    held_out = sources.prepare_local(os.path.join(text_folder, "a.txt"), 0.0, data_dir)["train"]
    name = f"jaxformers_text/{held_out.dataset_info.config_name}"
    srcs = sources.text_sources(
        os.path.join(text_folder, "b.txt"), 0.0, data_dir, val_corpus=f"tfds:{name}:train"
    )
    assert records(srcs["validation"]) == {"a.txt": DOCS["a.txt"]}
    assert records(srcs["train"]) == {"b.txt": DOCS["b.txt"]}
    with pytest.raises(ValueError, match="no split 'test'; it has train"):
        sources.text_sources(text_folder, 0.0, data_dir, val_corpus=f"tfds:{name}:test")
