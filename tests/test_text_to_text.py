"""Text-to-text for T5: sources and prefixes, counted truncation, packing, mixtures that resume bit
for bit, metrics against independent definitions, bad input, and a run whose generation metrics
cover every validation example once."""

import dataclasses
import json
import os

import numpy as np
import pytest
from helpers import play_excerpt

from jaxformers import train
from jaxformers.config import DataConfig, Experiment, OptimConfig, SampleConfig
from jaxformers.data.mixtures import BLOCK, Mixture, proportional_rates
from jaxformers.models.t5 import T5Config
from jaxformers.tasks import TASKS, text_metrics
from jaxformers.tasks import text_to_text as t2t
from jaxformers.tasks.text_to_text import TextToText

# ------------------------------------------------------------------------------------ metrics


def test_squad_metrics_follow_the_official_definition():
    # Normalisation: lower case, punctuation and articles gone, whitespace collapsed.
    assert text_metrics.normalize_answer("The  Cat, sat!  an apple") == "cat sat apple"
    # F1 by hand: prediction "cat sat on mat" vs "a cat sat" -> common {cat, sat} = 2,
    # precision 2/4, recall 2/2, F1 = 2 * 0.5 * 1 / 1.5 = 2/3.
    assert text_metrics.squad_f1("cat sat on mat", "a cat sat") == pytest.approx(2 / 3, abs=0)
    assert text_metrics.squad_f1("dog", "cat") == 0.0
    # Best reference counts: EM 1 for the first example (second reference), 0 for the second;
    # F1 1 and 2/3.
    got = text_metrics.score(
        "squad", ["Paris.", "cat sat on mat"], [["London", "paris"], ["a cat sat"]]
    )
    assert got["squad_em"] == pytest.approx(50.0)
    assert got["squad_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_exact_match_and_rouge_against_hand_and_rouge_score():
    got = text_metrics.score("exact_match", ["positive", " negative", "neg"], [["positive"]] * 3)
    assert got == {"exact_match": pytest.approx(100 / 3)}
    # ROUGE-1 by hand: "the cat sat" vs "the cat ran": 2 common unigrams of 3 and 3 -> F 2/3;
    # ROUGE-2: bigrams {the cat, cat sat} vs {the cat, cat ran} -> 1/2.
    r = text_metrics.rouge(["the cat sat"], ["the cat ran"])
    assert r["rouge1"] == pytest.approx(100 * 2 / 3)
    assert r["rouge2"] == pytest.approx(50.0)
    # The mean over examples equals the rouge-score package's own per-example scores.
    from rouge_score import rouge_scorer

    preds = ["police arrested two men .", "the storm hit the coast\nmany fled"]
    refs = ["two men were arrested by police .", "a storm hits the coast\nthousands fled"]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeLsum"], use_stemmer=True)
    want = {
        k: 100 * np.mean([scorer.score(r, p)[k].fmeasure for p, r in zip(preds, refs)])
        for k in ("rouge1", "rouge2", "rougeLsum")
    }
    assert text_metrics.score("rouge", preds, [[r] for r in refs]) == pytest.approx(want)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        text_metrics.score("exact_match", ["a", "b"], [["a"]])


# ------------------------------------------------------------------------ encoding, packing


def test_truncation_is_seqio_append_eos_after_trim():
    # Fits with EOS: untouched; one token too long: cut to length - 1 and EOS kept, counted.
    assert t2t.fit([5, 6, 7], 4, eos=1) == ([5, 6, 7, 1], False)
    assert t2t.fit([5, 6, 7, 8], 4, eos=1) == ([5, 6, 7, 1], True)
    assert t2t.fit([5, 6, 7, 8, 9, 10], 4, eos=1) == ([5, 6, 7, 1], True)


def test_packing_keeps_examples_apart():
    pairs = [([3, 4, 1], [7, 1]), ([5, 1], [8, 9, 1]), ([6, 6, 6, 1], [2, 1])]
    groups = t2t.pack(pairs, T=6, S=5)
    assert [len(g) for g in groups] == [2, 1]  # the third does not fit beside the first two
    row = t2t.make_row(groups[0], 6, 5, start=0)
    np.testing.assert_array_equal(row["encoder_input_tokens"], [3, 4, 1, 5, 1, 0])
    np.testing.assert_array_equal(row["encoder_segment_ids"], [1, 1, 1, 2, 2, 0])
    np.testing.assert_array_equal(row["decoder_target_tokens"], [7, 1, 8, 9, 1])
    # Each segment's decoder input starts afresh from the start token.
    np.testing.assert_array_equal(row["decoder_input_tokens"], [0, 7, 0, 8, 9])
    np.testing.assert_array_equal(row["decoder_segment_ids"], [1, 1, 2, 2, 2])
    np.testing.assert_array_equal(row["decoder_loss_weights"], [1, 1, 1, 1, 1])


def test_sources_and_prefixes(tmp_path):
    sst = t2t._tfds_examples("glue/sst2", {"sentence": b"a  fine film ", "label": 1})
    assert sst == ("sst2 sentence: a fine film", "positive", ["positive"])
    assert t2t._tfds_examples("glue/sst2", {"sentence": b"x", "label": -1}) is None
    rec = {"question": b"Who?", "context": b"Ann ran.", "answers": {"text": [b"Ann", b"ann"]}}
    assert t2t._tfds_examples("squad", rec) == ("question: Who? context: Ann ran.", "Ann",
                                                ["Ann", "ann"])  # fmt: skip
    summ = t2t._tfds_examples("cnn_dailymail", {"article": b"Long text.", "highlights": b"S.\n"})
    assert summ == ("summarize: Long text.", "S.", ["S."])
    tsv, jsonl = tmp_path / "a.tsv", tmp_path / "b.jsonl"
    tsv.write_text("in one\tout one\tother\nin two\tout two\n")
    jsonl.write_text(json.dumps({"inputs": "i", "targets": "t", "references": ["t", "u"]}) + "\n")
    assert t2t.read_local(str(tsv)) == [
        ("in one", "out one", ["out one", "other"]),
        ("in two", "out two", ["out two"]),
    ]
    assert t2t.read_local(str(jsonl)) == [("i", "t", ["t", "u"])]
    bad = tmp_path / "bad.tsv"
    bad.write_text("no tab here\n")
    with pytest.raises(ValueError, match="bad.tsv:1: expected inputs<TAB>targets"):
        t2t.read_local(str(bad))
    with pytest.raises(ValueError, match="text-to-text source 'glue/sst3' does not exist"):
        t2t.source_kind("glue/sst3")
    assert TASKS["text_to_text"] is TextToText
    with pytest.raises(ValueError, match="task.long_targets='drop'"):
        TextToText(long_targets="drop")


# -------------------------------------------------------------------------------- mixtures


def test_examples_proportional_rates_with_cap():
    # T5 paper: r_i = min(n_i, K) / sum_j min(n_j, K); exact arithmetic.
    np.testing.assert_array_equal(proportional_rates([100, 10, 1000], 200), [100 / 310,
                                  10 / 310, 200 / 310])  # fmt: skip
    np.testing.assert_array_equal(proportional_rates([3, 1]), [0.75, 0.25])
    with pytest.raises(ValueError, match="cap K=-1"):
        proportional_rates([1], -1)


def test_mixture_is_deterministic_resumable_and_follows_rates():
    srcs = [
        [("a", i) for i in range(7)],
        [("b", i) for i in range(50)],
        [("c", i) for i in range(3)],
    ]
    rates = proportional_rates([7, 50, 3], cap=20)  # 7/30, 20/30, 3/30
    batch, k = 16, 300  # 300 batches cross a BLOCK boundary
    full = Mixture(srcs, rates, seed=5)
    seq = [[full[s * batch + j] for j in range(batch)] for s in range(k + 3)]
    # "Stop after k batches, restore": a fresh mixture (nothing cached) reads on from step k.
    fresh = Mixture(srcs, rates, seed=5)
    assert k * batch > BLOCK
    for s in range(k, k + 3):
        assert [fresh[s * batch + j] for j in range(batch)] == seq[s]
    flat = [x for b in seq for x in b]
    share = {t: sum(x[0] == t for x in flat) / len(flat) for t in "abc"}
    assert share == pytest.approx(dict(zip("abc", rates)), abs=0.02)
    # Each task walks through all its examples before repeating one (a shuffled epoch).
    firsts = [x[1] for x in flat if x[0] == "c"][:3]
    assert sorted(firsts) == [0, 1, 2]
    other = [Mixture(srcs, rates, seed=6)[i] for i in range(64)]
    assert other != flat[:64]


# --------------------------------------------------------------------- a run on local files


def tiny_t5(**kw):
    return T5Config.preset(
        "tiny",
        vocab_size=384,
        d_model=24,
        d_kv=8,
        d_ff=40,
        num_heads=2,
        num_layers=1,
        num_decoder_layers=1,
        dropout_rate=0.0,
        n_positions=32,
        **kw,
    )


WORDS = "ant bee cat dog eel fox gnu hen ibis jay kite lark mole newt owl".split()


def write_copy_task(path, n, seed):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            w = " ".join(rng.choice(WORDS, 2))
            f.write(f"copy: {w}\t{w}\n")


@pytest.fixture(scope="module")
def spiece(tmp_path_factory):
    """A T5-style SentencePiece model (284 pieces + 100 sentinels) trained on a play excerpt: the
    copy task's few lines are too small a corpus to train one of this size."""
    from jaxformers.data.sentencepiece_vocab import train_sentencepiece

    prefix = tmp_path_factory.mktemp("spiece") / "spiece"
    train_sentencepiece(play_excerpt(40_000).splitlines(), prefix, vocab_size=284)
    return f"{prefix}.model"


def local_experiment(tmp_path, tokenizer="train", **task):
    train_f, dev_f = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    write_copy_task(train_f, 120, 0)
    write_copy_task(dev_f, 21, 1)  # 21 = two batches of 8 and a padded third
    return Experiment(
        name="t2t_test",
        task=TextToText(targets_length=24, **task),
        model=tiny_t5(),
        data=DataConfig(
            corpus=str(train_f),
            val_corpus=str(dev_f),
            tokenizer=tokenizer,
            vocab_size=384,
            seq_len=32,
        ),
        optim=OptimConfig(name="adafactor", lr=1e-2, warmup_steps=0, schedule="constant"),
        sample=SampleConfig(max_new_tokens=0),
        batch_size=8,
        steps=2,
        eval_every=0,
        eval_batches=0,
        log_every=1,
        progress=False,
    )


def test_run_scores_every_validation_example_once(tmp_path, data_dir, spiece, capsys):
    exp = local_experiment(tmp_path, spiece, pack=True)
    tr = train.Trainer(exp, str(tmp_path / "wd"))
    data = tr.data
    out = capsys.readouterr().out
    assert "train 120 examples in" in out and "validation 21 examples in 21 rows" in out
    assert data.truncated[exp.data.corpus]["train"]["rows"] < 120  # packed
    result = tr.run()
    m = result.eval_metrics
    assert m["generated"] == 21.0 and 0.0 <= m["exact_match"] <= 100.0
    # The same figure from the generations themselves and the references, independently.
    model, params = tr.model, train.checkpoint.load_params(os.path.join(tr.workdir, "params"))
    preds = data.generate_all(model, params)
    refs = [line.split("\t")[1].strip() for line in open(tmp_path / "dev.tsv")]
    assert sorted(i for i, _ in preds) == list(range(21))  # each example once
    hits = [p == refs[i] for i, p in preds]
    assert m["exact_match"] == pytest.approx(100 * np.mean(hits))

    # Fine-tuning (init_from) keeps the pretrained vocabulary when data.tokenizer asks for none
    # in particular ("train" or the kind's name).
    e = dataclasses.replace(
        exp, init_from=tr.workdir, data=dataclasses.replace(exp.data, tokenizer="sentencepiece")
    )
    e.task.build_data(e, str(tmp_path / "wd_ft"))
    spm = [open(os.path.join(w, "tokenizer", "spiece.model"), "rb").read() for w in
           (tr.workdir, str(tmp_path / "wd_ft"))]  # fmt: skip
    assert spm[0] == spm[1]

    # Bad input: a target that does not fit is refused with task.long_targets=error, counted
    # otherwise; an empty target is refused naming the example.
    long_f = tmp_path / "long.tsv"
    long_f.write_text("".join(f"x{i}\t{' '.join(WORDS)}\n" for i in range(20)))
    for policy in ("error", "truncate"):
        e = dataclasses.replace(
            exp,
            task=TextToText(targets_length=8, long_targets=policy),
            data=dataclasses.replace(exp.data, corpus=str(long_f)),
        )
        if policy == "error":
            with pytest.raises(ValueError, match="longer than task.targets_length=8"):
                e.task.build_data(e, str(tmp_path / "wd_long"))
        else:
            d = e.task.build_data(e, str(tmp_path / "wd_long2"))
            assert d.truncated[str(long_f)]["train"]["targets"] == 20
    empty_f = tmp_path / "empty.tsv"
    empty_f.write_text("a\tb\nc\t \n")
    e = dataclasses.replace(exp, data=dataclasses.replace(exp.data, corpus=str(empty_f)))
    with pytest.raises(ValueError, match="train example 1 has an empty target"):
        e.task.build_data(e, str(tmp_path / "wd_empty"))


def test_tfds_source_not_prepared_says_how(tmp_path):
    exp = dataclasses.replace(
        local_experiment(tmp_path),
        data=DataConfig(corpus="glue/sst2", data_dir=str(tmp_path / "empty_tfds"), seq_len=16),
    )
    with pytest.raises(RuntimeError, match="not prepared.*tfds build glue/sst2"):
        exp.task.build_data(exp, str(tmp_path / "wd"))


def test_mixture_of_local_files_resumes_and_scores_each_source(tmp_path, data_dir, spiece):
    exp = local_experiment(tmp_path, spiece, mixture_cap=50)
    a, b = tmp_path / "a.tsv", tmp_path / "b.tsv"
    write_copy_task(a, 80, 2)
    b.write_text("".join(f"name: {w}\t{w.upper()}\n" for w in WORDS * 2))
    exp = dataclasses.replace(
        exp, data=dataclasses.replace(exp.data, corpus=f"{a}+{b}", val_corpus="", val_fraction=0.2)
    )
    data = exp.task.build_data(exp, str(tmp_path / "wd"))
    assert data.names == [str(a), str(b)]
    # 64 and 24 training rows, capped at K=50: rates 50/74 and 24/74.
    np.testing.assert_allclose(data.rates, [50 / 74, 24 / 74], rtol=0, atol=1e-15)
    seq = [data.train_batch(s) for s in range(6)]
    again = exp.task.build_data(exp, str(tmp_path / "wd"))  # a resumed run's data
    for s in (4, 5):
        for k in seq[s]:
            np.testing.assert_array_equal(again.train_batch(s)[k], seq[s][k])
    # Every validation example of each source is scored once, under the source's name.
    refs = data.references
    assert [len(refs[n]) for n in data.names] == [16, 6] and data.val.num_batches == 3
    rows = [data.val_rows[k] for k in range(22)]
    ids = [int(r["example_id"]) for r in rows]
    assert sorted(ids[:16]) == list(range(16)) and sorted(ids[16:]) == list(range(6))
    # Perfect generations: each row's own reference (found by its example id).
    perfect = [(i, refs[data.names[k >= 16]][i][0]) for k, i in enumerate(ids)]
    data.generate_all = lambda model, params, n: perfect[:n]
    m = data.decode_metrics(None, None, data.val.num_batches)
    assert m == {"generated": 22.0, f"{a}/exact_match": 100.0, f"{b}/exact_match": 100.0}
    m = data.decode_metrics(None, None, 1)  # eval_batches=1: the first 8 examples only
    assert m == {"generated": 8.0, f"{a}/exact_match": 100.0}
