"""Question answering (SQuAD v1.1): windows, post-processing, the official EM/F1, bad input, the
``answer`` command and a small model that learns to answer (slow)."""

import json
import os

import jax
import numpy as np
import pytest
from helpers import ROOT

from jaxformers import cli, hf, inference
from jaxformers.config import DataConfig
from jaxformers.data.wordpiece import WordPieceTokenizer
from jaxformers.models.bert import BertConfig, BertForQuestionAnswering
from jaxformers.tasks import question_answering as qa

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = [f"w{i}" for i in range(20)] + ["who", "says", "the", "quick", "brown", "fox", "?", "."]


@pytest.fixture(scope="module")
def tok():
    return WordPieceTokenizer(SPECIALS + WORDS)


CONTEXT = " ".join(f"w{i}" for i in range(20))  # 20 pieces, "w0 w1 ... w19"


def test_windows_with_doc_stride_hand_worked(tok):
    # T=12 with a one-piece question: 12 - 1 - 3 = 8 context pieces per window, starts 3 apart:
    # (0..7), (3..10), (6..13), (9..16), (12..19); the last window ends at the last piece.
    assert qa.doc_spans(20, 8, 3) == [(0, 8), (3, 8), (6, 8), (9, 8), (12, 8)]
    q = qa.Question("x", "who", CONTEXT, (("w9 w10", CONTEXT.index("w9")),))
    ids, offs = tok.encode_with_offsets(CONTEXT)
    answer = qa.answer_pieces(CONTEXT, offs, *q.answers[0])
    assert answer == (9, 10)
    windows, cut = qa.question_windows(tok, q, 12, 3, 64, answer)
    assert not cut and len(windows) == 5
    # The answer (pieces 9, 10) lies whole in windows 1-3; [CLS] q [SEP] puts context at 3.
    targets = [(w.start_position, w.end_position) for w in windows]
    assert targets == [(0, 0), (9 - 3 + 3, 10 - 3 + 3), (9 - 6 + 3, 10 - 6 + 3), (3, 4), (0, 0)]
    w = windows[2]
    assert tok.convert_ids_to_tokens(w.input_ids) == ["[CLS]", "who", "[SEP]"] + [
        f"w{i}" for i in range(6, 14)
    ] + ["[SEP]"]
    assert w.segment_ids == [0] * 3 + [1] * 9
    assert w.offsets[3] == (CONTEXT.index("w6"), CONTEXT.index("w6") + 2)
    assert w.offsets[:3] == [(-1, -1)] * 3 and w.offsets[-1] == (-1, -1)
    # Piece 9: min(left, right) + 0.01 * 8 is 1.08 in window 1, 3.08 in window 2, 0.08 in 3.
    assert [windows[k].max_context[9 - s + 3] for k, s in ((1, 3), (2, 6), (3, 9))] == [
        False,
        True,
        False,
    ]
    # Every context piece has its most context in exactly one window.
    for p in range(20):
        assert sum(qa.is_max_context(qa.doc_spans(20, 8, 3), k, p) for k in range(5)) == 1


def _window(T, ctx_lo, ctx_hi, offsets, maxc=None):
    """offsets [T, 2] with the context at positions [ctx_lo, ctx_hi); max_context default all."""
    off = np.full((T, 2), -1, np.int32)
    off[ctx_lo:ctx_hi] = offsets
    mc = np.zeros(T, bool)
    mc[ctx_lo:ctx_hi] = True if maxc is None else maxc
    return off, mc


def test_post_processing_hand_made_logits():
    context = "The Quick  brown FOX jumps."
    # Pieces: The(0,3) Quick(4,9) brown(11,16) FOX(17,20) at window positions 3..6.
    spans = [(0, 3), (4, 9), (11, 16), (17, 20)]
    off, mc = _window(8, 3, 7, spans)
    s = np.array([10, 0, 0, 3, 5, 4, 0, 0], np.float32)  # [CLS] has the largest start logit
    e = np.array([0, 0, 0, 9, 2, 6, 1, 0], np.float32)
    # n_best=2: starts {0 ([CLS], not context), 4}, ends {3, 5}: (4, 3) has end < start, so
    # (4, 5) "Quick  brown" (score 11) wins; n_best=4 adds start 3: (3, 3) "The" scores 12.
    p = qa.best_answer(context, [(s, e, off, mc)], n_best=2)
    assert (p.text, p.start, p.end, p.score) == ("Quick  brown", 4, 16, 11.0)
    assert qa.best_answer(context, [(s, e, off, mc)], n_best=3).text == "Quick  brown"
    assert qa.best_answer(context, [(s, e, off, mc)], n_best=4).text == "The"
    # max_answer_length: (3, 6) "The Quick  brown FOX" scores 18 but has 4 pieces; with at most
    # 3 the best is (3, 5) at 11.
    s3 = np.array([0, 0, 0, 9, 1, 1, 0, 0], np.float32)
    e3 = np.array([0, 0, 0, 0, 1, 2, 9, 0], np.float32)
    assert qa.best_answer(context, [(s3, e3, off, mc)]).text == "The Quick  brown FOX"
    p = qa.best_answer(context, [(s3, e3, off, mc)], max_answer_length=3)
    assert (p.text, p.score) == ("The Quick  brown", 11.0)
    # The best across windows: a second window whose pair scores higher wins; a start without
    # its most context in a window is not taken from that window.
    off2, mc2 = _window(8, 3, 5, spans[2:])
    s2 = np.array([0, 0, 0, 0, 30, 0, 0, 0], np.float32)  # "FOX" at position 4
    e4 = np.array([0, 0, 0, 0, 1, 0, 0, 0], np.float32)
    p = qa.best_answer(context, [(s, e, off, mc), (s2, e4, off2, mc2)], n_best=20)
    assert (p.text, p.start, p.end, p.score) == ("FOX", 17, 20, 31.0)
    mc2[4] = False  # FOX's most context is elsewhere: only window one counts
    p = qa.best_answer(context, [(s, e, off, mc), (s2, e4, off2, mc2)], n_best=20)
    assert p.text == "The"  # (3, 3) = 12 is window one's best once start 3 is a candidate
    assert context[p.start : p.end] == p.text
    # No qualifying span: an empty answer, not a crash.
    none = qa.best_answer(context, [(s, e, np.full((8, 2), -1), np.zeros(8, bool))])
    assert none.text == "" and none.start == -1


def test_squad_em_f1_official_definition():
    # evaluate-v1.1.py: lower case, no punctuation, no articles a/an/the, collapsed spaces; F1 of
    # the bags of tokens; each prediction takes its best gold answer.
    qs = [
        qa.Question("1", "", "", (("Eiffel tower", 0),)),
        qa.Question("2", "", "", (("Paris", 0), ("big house", 0))),
        qa.Question("3", "", "", (("an apple", 0),)),
    ]
    preds = [
        qa.Prediction("the Eiffel   Tower!", 0, 0, 0.0, 1.0),  # EM 1
        qa.Prediction("in the big red house", 0, 0, 0.0, 1.0),  # vs "big house": P 2/4, R 1
        qa.Prediction("pear", 0, 0, 0.0, 1.0),  # nothing shared
    ]
    m = qa.squad_scores(qs, preds)
    assert m["exact_match"] == pytest.approx(100 / 3)
    assert m["f1"] == pytest.approx(100 * (1 + 2 * 0.5 * 1 / 1.5 + 0) / 3)
    assert m["questions"] == 3


def _squad_file(path, articles):
    data = [
        {"title": f"a{a}", "paragraphs": [{"context": c, "qas": qas} for c, qas in pars]}
        for a, pars in enumerate(articles)
    ]
    with open(path, "w") as f:
        json.dump({"version": "1.1", "data": data}, f)
    return str(path)


def _qas(context, items):
    return [
        {"id": i, "question": q, "answers": [{"text": t, "answer_start": context.find(t) + d}]}
        for i, q, t, d in items
    ]


def test_bad_input(tmp_path, tok):
    bad = tmp_path / "broken.json"
    bad.write_text('{"data": [')
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        qa.read_squad_json(str(bad))
    bad.write_text('{"data": [{"paragraphs": [{"context": "x", "qas": [{"id": "1"}]}]}]}')
    with pytest.raises(ValueError, match="broken.json: article 0 paragraph 0 question 0 has no"):
        qa.read_squad_json(str(bad))
    # A question far longer than the window is cut to max_query_length, counted, and fits.
    long_q = qa.Question("l", " ".join(["who"] * 500), CONTEXT, ())
    counts = qa.new_counts()
    pairs = list(qa.encode_split(tok, [long_q], 16, 4, 8, counts, False))
    assert counts["questions_cut"] == 1 and all(len(w.input_ids) <= 16 for _, w in pairs)
    assert all(w.input_ids[:10] == [tok.cls_id] + [tok.convert_tokens_to_ids(["who"])[0]] * 8
               + [tok.sep_id] for _, w in pairs)  # fmt: skip
    with pytest.raises(ValueError, match="leaves no context"):
        qa.check_lengths(16, 4, 13)
    # An answer not at its answer_start: skipped in training, counted.
    good = qa.Question("g", "who", CONTEXT, (("w3", CONTEXT.index("w3")),))
    moved = qa.Question("m", "who", CONTEXT, (("w3", CONTEXT.index("w3") + 1),))
    counts = qa.new_counts()
    pairs = list(qa.encode_split(tok, [good, moved], 16, 4, 8, counts, True))
    assert counts["skipped"] == 1 and counts["questions"] == 1
    assert {i for i, _ in pairs} == {0}


def _tiny_config(vocab_size, T):
    return BertConfig.preset(
        "tiny",
        architecture="BertForQuestionAnswering",
        num_hidden_layers=1,
        hidden_size=16,
        num_attention_heads=2,
        intermediate_size=24,
        vocab_size=vocab_size,
        max_position_embeddings=T,
    )


def _tiny_qa(vocab_size=64, T=16, seed=0):
    """One small shape for every test here: the jitted init compiles once a session."""
    assert vocab_size <= 64
    model = BertForQuestionAnswering(_tiny_config(64, T))
    ids = np.zeros((1, T), np.int32)
    params = jax.jit(model.init)(jax.random.PRNGKey(seed), ids)["params"]
    return model, params


def test_eval_counts_every_question_once(tmp_path, capsys):
    """build_data end to end on a small file (one bad answer), then the metrics over the dev
    questions whose contexts span several windows: each question scored once."""
    ctx = "the quick brown fox . " + CONTEXT + " . the end"
    train = _qas(ctx, [("t1", "who says w3 ?", "w3", 0), ("t2", "who", "fox", 0)])
    train += _qas(ctx, [("t3", "who", "brown", 3)])  # answer_start off by 3: skipped
    dev = _qas(ctx, [("d1", "who", "w12", 0), ("d2", "the quick", "w1", 0)])
    dev += _qas(ctx, [("d3", "who says", "quick", 0)])
    path = _squad_file(tmp_path / "s.json", [[(ctx, train)], [(ctx, dev)]])

    from jaxformers.config import Experiment

    task = qa.QuestionAnswering(doc_stride=5, max_query_length=4)
    exp = Experiment(
        name="qa_test",
        task=task,
        model=_tiny_config(64, 16),
        data=DataConfig(
            corpus=path,
            tokenizer="wordpiece",
            vocab_size=64,
            seq_len=16,
            val_fraction=0.5,
            data_dir=str(tmp_path / "tfds"),
        ),  # fmt: skip
        batch_size=4,
        steps=1,
    )
    data = task.build_data(exp, str(tmp_path / "wd"))
    # The window settings `jaxformers answer` takes from the workdir.
    assert qa.saved_settings(str(tmp_path / "wd")) == dict(
        max_seq_length=16, doc_stride=5, max_query_length=4, max_answer_length=30, n_best=20
    )
    out = capsys.readouterr().out
    assert "train 2 questions" in out and "1 skipped" in out
    assert len(data.questions) == 3
    ex = data.windows.example
    assert len(ex) > 3 * 3 and sorted(set(ex.tolist())) == [0, 1, 2]  # several windows each
    model, params = _tiny_qa(data.tokenizer.vocab_size)
    n_batches = -(-len(ex) // data.eval_batch_size)
    m = data.decode_metrics(model, params, n_batches)
    assert m["questions"] == 3
    # The same figures from an independent pass: every window's logits, grouped by question.
    rows = data.windows.rows
    # One jitted pass over all the windows (the metrics ran batches of 4).
    out = jax.jit(model.apply)({"params": params}, rows["input_ids"],
                               token_type_ids=rows["segment_ids"],
                               attention_mask=rows["input_mask"])  # fmt: skip
    s, e = out.start_logits, out.end_logits
    preds = []
    for i, q in enumerate(data.questions):
        mine = np.flatnonzero(ex == i)
        group = [(np.asarray(s[j]), np.asarray(e[j]), data.windows.offsets[j],
                  data.windows.max_context[j]) for j in mine]  # fmt: skip
        preds.append(qa.best_answer(q.context, group))
    assert m == qa.squad_scores(data.questions, preds)
    # A limit of one batch scores whole questions only: those it reaches, each once.
    part = data.decode_metrics(model, params, 1)
    assert 1 <= part["questions"] < 3
    # The stored validation rows (the loss evaluation's, in TFDS's order) are these windows.
    key = lambda r: (*r["input_ids"].tolist(), int(r["start_position"]), int(r["end_position"]))  # noqa: E731
    stored = sorted(key(data.val.source[j]) for j in range(len(data.val.source)))
    assert stored == sorted(key({k: v[j] for k, v in rows.items()}) for j in range(len(ex)))


def test_answer_cli_prints_the_documented_format(tmp_path, capsys, tok):
    model, params = _tiny_qa(tok.vocab_size, seed=3)
    out_dir = str(tmp_path / "hf")
    hf.save_pretrained(model, params, out_dir)
    tok.save_vocab(out_dir)
    context = "The quick Brown fox . " + CONTEXT
    argv = ["answer", "--model", out_dir, "--question", "who says", "--context", context]
    argv += ["--max-seq-length", "16"]  # 16 - 2 - 3 = 11 context pieces a window, stride 5
    assert cli.main([*argv, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"answer", "start", "end", "score", "probability", "windows"}
    assert got["windows"] == 4  # 25 context pieces: windows at 0, 5, 10, 15 (15 + 11 > 25)
    assert context[got["start"] : got["end"]] == got["answer"] != ""
    assert cli.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"answer: {got['answer']}"
    assert lines[1] == f"characters: [{got['start']}, {got['end']}) of the context"
    assert lines[2].startswith(f"score: {got['score']:.4f} (start + end logit; probability ")
    # A workdir's own settings (question_answering.json, as the task writes it) are the defaults:
    # a stride of 3 gives windows at 0, 3, ..., 15; a flag still wins.
    settings = dict(max_seq_length=16, doc_stride=3, max_query_length=4)
    with open(os.path.join(out_dir, inference.QA_JSON), "w") as f:
        json.dump({**settings, "max_answer_length": 30, "n_best": 20}, f)
    base = argv[: argv.index("--max-seq-length")]
    assert cli.main([*base, "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["windows"] == 6
    assert "windows of 16 pieces, stride 3" in captured.err
    assert cli.main([*base, "--json", "--doc-stride", "5"]) == 0
    assert json.loads(capsys.readouterr().out)["windows"] == 4

    # A model without the QA head is refused with a message, not a crash in jax.
    from jaxformers.models.bert import BertModel

    with pytest.raises(ValueError, match="needs a BertForQuestionAnswering model"):
        qa.check_model(BertModel(BertConfig.preset("tiny")))


@pytest.mark.slow
def test_small_model_learns_to_answer(tmp_path):
    """A tiny BERT on the plays' "Who says ...?" files: the training loss falls and dev exact
    match is above 0."""
    import dataclasses

    from jaxformers import config, train

    exp = config.load_experiment(os.path.join(ROOT, "experiments", "bert_squad.py"), "tiny")
    exp = dataclasses.replace(
        exp,
        model=dataclasses.replace(
            exp.model,
            hidden_size=64,
            num_attention_heads=4,
            num_hidden_layers=2,
            intermediate_size=128,
        ),  # fmt: skip
        batch_size=16,
        steps=120,
        eval_every=0,
        eval_batches=0,
        optim=dataclasses.replace(exp.optim, lr=2e-3, warmup_steps=10),
        log_every=10,
        checkpoint=dataclasses.replace(exp.checkpoint, every=1000),  # tiny's is every step
    )
    result = train.Trainer(exp, str(tmp_path)).run()
    with open(tmp_path / "metrics.jsonl") as f:
        losses = [r["loss"] for r in map(json.loads, f) if r["split"] == "train"]
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses
    m = result.eval_metrics
    assert m["questions"] == 304 and m["exact_match"] > 0, m
    # The run's window settings go with an HF export, where `jaxformers answer` reads them too.
    saved = qa.saved_settings(str(tmp_path))
    assert saved == exp.task.settings(exp.data.seq_len)
    inference.export_hf(str(tmp_path), str(tmp_path / "hf"))
    assert qa.saved_settings(str(tmp_path / "hf")) == saved


def test_unprepared_tfds_squad_fails_at_once_when_its_host_is_unreachable(tmp_path, monkeypatch):
    """Offline, TFDS's own download retries a connection with backoff for ~200 s before it fails:
    the host the dataset downloads from is tried once first, and the error names it and how to
    prepare the dataset."""
    from jaxformers.data import sources

    url = "https://jaxformers-offline.invalid/SQuAD/train-v1.1.json"  # .invalid never resolves
    monkeypatch.setattr(sources, "_download_urls", lambda builder: [url])

    def download(*args, **kwargs):
        raise AssertionError("TFDS was asked to download")

    monkeypatch.setattr(sources.tfds, "data_source", download)
    said = r"'squad' is not prepared.*cannot reach jaxformers-offline\.invalid.*tfds build squad"
    with pytest.raises(RuntimeError, match=said):
        qa.read_questions(DataConfig(corpus="tfds:squad"), str(tmp_path / "tfds"))


def test_readers_local_split_and_tfds_record(tmp_path):
    # A TFDS squad record as tfds.data_source gives it: bytes, answers as arrays.
    rec = {
        "id": b"5733be28",
        "title": b"Notre_Dame",
        "context": b"Architecturally, the school has a Catholic character.",
        "question": b"What character?",
        "answers": {
            "text": np.array([b"Catholic", b"a Catholic"]),
            "answer_start": np.array([34, 32]),
        },
    }
    q = qa.tfds_question(rec)
    assert q == qa.Question(
        "5733be28",
        "What character?",
        rec["context"].decode(),
        (("Catholic", 34), ("a Catholic", 32)),
    )
    assert [q.context[s : s + len(t)] for t, s in q.answers] == ["Catholic", "a Catholic"]
    # A local file: the last val_fraction of its articles are the dev set; or data.val_corpus.
    arts = [[("ctx w1", _qas("ctx w1", [(f"a{a}", "who", "w1", 0)]))] for a in range(5)]
    path = _squad_file(tmp_path / "s.json", arts)
    read = qa.read_questions(DataConfig(corpus=path, val_fraction=0.4), "")
    assert [q.qid for q in read["train"]()] == ["a0", "a1", "a2"]
    assert [q.qid for q in read["validation"]()] == ["a3", "a4"]
    read = qa.read_questions(DataConfig(corpus=path, val_corpus=path), "")
    assert len(list(read["train"]())) == len(list(read["validation"]())) == 5
    with pytest.raises(ValueError, match="too few to hold out"):
        qa.read_questions(DataConfig(corpus=path, val_fraction=0.01), "")
    with pytest.raises(ValueError, match=r"give a SQuAD v1.1 \.json file or tfds:squad"):
        qa.read_questions(DataConfig(corpus="x.txt"), "")


def test_cased_vocabulary_loads_cased(tmp_path):
    """A workdir's cased WordPiece vocabulary (the plays variant's) is read back cased by
    ``inference.load`` (``jaxformers answer``), not lowercased by default."""
    from jaxformers.data import tokenizers

    texts = lambda: iter(["ROMEO:\nWho says that?", "JULIET:\nRomeo says it."] * 20)  # noqa: E731
    tok = tokenizers.load_or_train("wordpiece", "train", str(tmp_path), texts, 120, False)
    back = tokenizers.load_tokenizer("wordpiece", str(tmp_path))
    assert not tok.lowercase and not back.lowercase
    assert back.tokenize("ROMEO says") == tok.tokenize("ROMEO says") != ["romeo", "says"]
