"""NER (token classification): word-to-piece label alignment, the CoNLL and BIO readers, the
label set's errors, entity metrics against seqeval over every dev example once (through the
Trainer's evaluation), ``jaxformers tag`` and the HF round trip of a tagger with its labels."""

import json
import os

import jax
import numpy as np
import pytest
from seqeval.metrics import f1_score, precision_score, recall_score

from jaxformers import checkpoint, cli, inference, train
from jaxformers.config import CheckpointConfig, DataConfig, Experiment, MeshConfig
from jaxformers.data.wordpiece import WordPieceTokenizer
from jaxformers.models.bert import BertConfig
from jaxformers.tasks import token_classification as tc
from jaxformers.tasks.token_classification import (
    Sentence,
    TokenClassification,
    encode_words,
    label_ids_of,
    read_conll,
)

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
VOCAB = SPECIAL + ["ham", "##let", "is", "here", ".", "Ho", "##ra", "##tio", ",", "Romeo", "come"]


def test_first_piece_carries_the_label_and_cut_words_are_counted():
    tok = WordPieceTokenizer(VOCAB, lowercase=False)
    # ham ##let | is | Ho ##ra ##tio | .   with labels B-PER O B-PER O (ids 1 0 1 0)
    ids, labels, kept = encode_words(tok, ["hamlet", "is", "Horatio", "."], [1, 0, 1, 0], 16)
    assert ids == [2, 5, 6, 7, 10, 11, 12, 9, 3]
    assert labels == [-1, 1, -1, 0, 1, -1, -1, 0, -1] and kept == 4
    # Six tokens: room for 4 pieces; Horatio keeps its first piece, "." is cut.
    ids, labels, kept = encode_words(tok, ["hamlet", "is", "Horatio", "."], [1, 0, 1, 0], 6)
    assert ids == [2, 5, 6, 7, 10, 3] and labels == [-1, 1, -1, 0, 1, -1] and kept == 3
    # A word outside the vocabulary is one [UNK] piece that carries its label.
    ids, labels, _ = encode_words(tok, ["Yorick"], [1], 8)
    assert ids == [2, 1, 3] and labels == [-1, 1, -1]


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP B-NP I-PER
"""


def test_readers_conll_bio_and_malformed_line(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(CONLL)
    got = read_conll(str(path))
    assert [s.words for s in got] == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert [s.labels for s in got] == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    assert got[1].lines == [7, 8] and got[1].where(1) == f"{path}:8"
    bio = tmp_path / "bio.txt"
    bio.write_text("Romeo B-PER\ncomes O\n\n\nJuliet B-PER\n")
    assert [(s.words, s.labels) for s in read_conll(str(bio))] == [
        (["Romeo", "comes"], ["B-PER", "O"]),
        (["Juliet"], ["B-PER"]),
    ]
    bad = tmp_path / "bad.txt"
    bad.write_text("EU NNP B-NP B-ORG\nrejects VBZ B-VP O\nGerman B-MISC\n")
    with pytest.raises(ValueError, match=f"{bad}:3: malformed line"):
        read_conll(str(bad))
    with pytest.raises(ValueError, match="bad.txt:1: malformed.* 4 columns where .* has 2"):
        read_conll(str(bad), "bio")


def test_label_outside_the_set_names_file_line_and_label(tmp_path):
    dev = tmp_path / "dev.txt"
    dev.write_text("Romeo B-PER\n\nVerona B-LOC\n")
    index = {"O": 0, "B-PER": 1, "I-PER": 2}
    first, second = read_conll(str(dev))
    assert label_ids_of(first, index) == [1]
    with pytest.raises(ValueError, match=rf"{dev}:3: label 'B-LOC' is not in the label set"):
        label_ids_of(second, index)
    assert tc.labels_from(iter([first, second, Sentence(["a"], ["O"])])) == ("O", "B-LOC", "B-PER")


# ------------------------------------------------------------------- through the Trainer

LABELS = ("O", "B-PER", "I-PER", "B-LOC")
TRAIN = [
    ("Romeo is here .", "B-PER O O O"),
    ("Ho , come .", "O O O O"),
    ("hamlet come here", "B-PER O O"),
]
# Seven dev sentences (batch 4: two eval batches, the second padded), one longer than seq_len.
DEV = [
    ("Romeo come here .", "B-PER O O O"),
    ("hamlet Romeo is here", "B-PER I-PER O O"),
    ("Horatio , come", "B-PER O O"),
    ("here is Romeo", "O O B-PER"),
    ("come .", "O O"),
    (
        "Romeo , hamlet , Horatio , Romeo , hamlet , Horatio",
        " ".join(["B-PER", "O"] * 5) + " B-LOC",
    ),
    ("is", "O"),
]
T = 12


def write_bio(path, rows):
    path.write_text(
        "\n\n".join("\n".join(map(" ".join, zip(w.split(), y.split()))) for w, y in rows)
    )


def tagger_experiment(tmp_path):
    (tmp_path / "vocab").mkdir(exist_ok=True)
    (tmp_path / "vocab" / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    write_bio(tmp_path / "train.txt", TRAIN)
    write_bio(tmp_path / "dev.txt", DEV)
    exp = Experiment(
        name="ner_eval_once",
        model=BertConfig(
            vocab_size=len(VOCAB),
            hidden_size=10,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=11,
            max_position_embeddings=T,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
            architecture="BertForTokenClassification",
            num_labels=len(LABELS),
        ),
        task=TokenClassification(labels=LABELS),
        data=DataConfig(
            corpus=str(tmp_path / "train.txt"),
            val_corpus=str(tmp_path / "dev.txt"),
            tokenizer=str(tmp_path / "vocab"),
            lowercase=False,
            seq_len=T,
            data_dir=str(tmp_path / "tfds"),
        ),
        mesh=MeshConfig((2, 1, 1)),
        checkpoint=CheckpointConfig(every=1000, keep=1, async_save=False),
        batch_size=4,
        steps=1,
        eval_every=0,
        progress=False,
        peak_tflops=1.0,
    )
    return exp


@pytest.fixture(scope="module")
def tagger(tmp_path_factory):
    """(workdir of a random tagger exported as a training run exports it, its eval metrics,
    the reference forward pass)."""
    tmp = tmp_path_factory.mktemp("ner")
    exp = tagger_experiment(tmp)
    wd = str(tmp / "run")
    tr = train.Trainer(exp, wd, devices=jax.devices()[:2])
    assert tr.num_eval_batches() == 2
    state = tr.init_state()
    # The random classifier scaled up: its argmax then varies from word to word, so the metrics
    # see hits, misses and false alarms (asserted below) rather than all "O".
    params = jax.device_get(state.params)
    params["classifier"]["kernel"] = params["classifier"]["kernel"] * 300.0
    state = state.replace(params=jax.device_put(params, tr.state_shardings.params))
    _, eval_fn = tr.compiled_steps()
    got = tr.evaluate(state, eval_fn)
    checkpoint.export_params(params, os.path.join(wd, "params"))
    inference.write_model_json(wd, exp.model)
    return wd, got, state


def reference_predictions(state):
    """Every dev sentence tagged by one forward pass of the same params over the seven sentences
    (no evaluation batches, no padding rows): each word encoded on its own, its first piece's
    argmax its prediction, words whose first piece is past seq_len "O"."""
    tok = WordPieceTokenizer(VOCAB, lowercase=False)
    ids = np.zeros((len(DEV), T), np.int32)
    mask = np.zeros((len(DEV), T), np.int32)
    firsts, golds = [], []
    for r, (words, labels) in enumerate(DEV):
        row, first, gold = [tok.cls_id], [], []
        for w, y in zip(words.split(), labels.split()):
            if len(row) - 1 >= T - 2:
                break
            first.append(len(row))
            gold.append(LABELS.index(y))
            row += tok.encode(w)[: T - 2 - (len(row) - 1)]
        row.append(tok.sep_id)
        ids[r, : len(row)], mask[r, : len(row)] = row, 1
        firsts.append(first)
        golds.append(gold)
    out = state.apply_fn({"params": state.params}, ids, attention_mask=mask)
    logits = np.asarray(out.logits, np.float64)
    preds, nll, n, correct = [], 0.0, 0, 0
    for r, (first, gold) in enumerate(zip(firsts, golds)):
        z = logits[r, first]
        logp = z - z.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll -= logp[np.arange(len(gold)), gold].sum()
        correct += int((z.argmax(-1) == gold).sum())
        n += len(gold)
        tags = [LABELS[i] for i in z.argmax(-1)]
        preds.append(tags + ["O"] * (len(DEV[r][0].split()) - len(tags)))
    return preds, nll / n, correct / n


def test_eval_counts_every_dev_example_once_and_entity_f1_is_seqevals(tagger):
    wd, got, state = tagger
    gold = [y.split() for _, y in DEV]
    preds, loss, acc = reference_predictions(state)
    # The test means something: some entities are found, some missed, some spurious.
    assert 0 < got["entity_precision"] < 100 and 0 < got["entity_recall"] < 100
    assert got["tagged"] == 7
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert got["token_accuracy"] == pytest.approx(acc, abs=1e-6)
    assert got["entity_f1"] == pytest.approx(100 * f1_score(gold, preds, zero_division=0))
    assert got["entity_precision"] == pytest.approx(
        100 * precision_score(gold, preds, zero_division=0)
    )
    assert got["entity_recall"] == pytest.approx(100 * recall_score(gold, preds, zero_division=0))
    with open(os.path.join(wd, "labels.json")) as f:
        assert json.load(f) == list(LABELS)


def test_entity_scores_on_hand_made_predictions():
    # Gold: 4 entities. Predicted: 4, of which 2 exact (Romeo; Verona), one with the wrong end,
    # one spurious; the cut word's entity (last) is predicted O: a miss. P = 2/4, R = 2/4.
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-PER", "O"], ["B-PER"]]
    pred = [["B-PER", "I-PER", "O", "B-LOC"], ["B-PER", "B-PER", "I-PER"], ["O"]]
    got = tc.entity_scores(gold, pred)
    assert got["entity_precision"] == pytest.approx(50.0)
    assert got["entity_recall"] == pytest.approx(50.0)
    assert got["entity_f1"] == pytest.approx(50.0)


def test_tag_prints_entities_with_offsets(tagger, capsys, tmp_path):
    wd, _, state = tagger
    # Every word B-PER: each word is an entity of its own, so all the offsets show.
    params = jax.device_get(state.params)
    params["classifier"]["kernel"] = np.zeros_like(params["classifier"]["kernel"])
    params["classifier"]["bias"] = np.asarray([0.0, 5.0, 0.0, 0.0], np.float32)
    wd2 = str(tmp_path / "all_per")
    checkpoint.export_params(params, os.path.join(wd2, "params"))
    inference.write_model_json(wd2, inference.read_model_json(wd))
    for name in ("tokenizer", "labels.json"):
        os.symlink(os.path.join(wd, name), os.path.join(wd2, name))
    assert cli.main(["tag", "--model", wd2, "--text", "Romeo, come."]) == 0
    out = capsys.readouterr().out
    assert out == "PER\t0\t5\tRomeo\nPER\t5\t6\t,\nPER\t7\t11\tcome\nPER\t11\t12\t.\n"
    assert cli.main(["tag", "--model", wd2, "--text", "Romeo, come.", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["entities"][2] == {"text": "come", "label": "PER", "start": 7, "end": 11}
    # A text longer than the model's positions is tagged in chunks of whole words.
    long = " ".join(["Romeo"] * 25)
    assert cli.main(["tag", "--model", wd2, "--text", long, "--json"]) == 0
    ents = json.loads(capsys.readouterr().out)["entities"]
    assert [(e["start"], e["end"]) for e in ents] == [(6 * i, 6 * i + 5) for i in range(25)]


def test_hf_round_trip_keeps_label_names(tagger, tmp_path, transformers, torch, capsys):
    wd, _, _ = tagger
    hf_dir = str(tmp_path / "hf")
    assert cli.main(["convert", "--workdir", wd, "--to-hf", hf_dir]) == 0
    with open(os.path.join(hf_dir, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["id2label"] == {str(i): n for i, n in enumerate(LABELS)}
    pt = transformers.BertForTokenClassification.from_pretrained(hf_dir).eval()
    assert pt.config.id2label == dict(enumerate(LABELS))
    ids = np.asarray([[2, 14, 13, 15, 9, 3]], np.int64)
    with torch.no_grad():
        ref = pt(torch.from_numpy(ids)).logits.numpy()
    model, params, _ = inference.load(hf_dir)
    ours = np.asarray(model.apply({"params": params}, ids.astype(np.int32)).logits)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    back = str(tmp_path / "back")
    assert cli.main(["convert", "--workdir", back, "--from-hf", hf_dir]) == 0
    with open(os.path.join(back, "labels.json")) as f:
        assert json.load(f) == list(LABELS)
    capsys.readouterr()
    text = "Romeo, come here. hamlet is here"
    outs = []
    for d in (wd, hf_dir, back):
        assert cli.main(["tag", "--model", d, "--text", text, "--json"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1] == outs[2]
