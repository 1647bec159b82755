"""Fine-tuning BERT-base (cased) for named-entity recognition on CoNLL-2003 (TFDS ``conll2003``).

Launch (weights and vocabulary from a Hugging Face-format bert-base-cased directory or Hub id):
    jaxformers train experiments/bert_conll2003.py --workdir /tmp/conll \
        --set init_from=/path/to/bert-base-cased --set data.tokenizer=/path/to/bert-base-cased
    ... --set task.eval_split=test     (the test F1 instead of the dev F1)
    jaxformers tag --model /tmp/conll --text "Angela Merkel met Emmanuel Macron in Paris."

Preparing TFDS ``conll2003`` downloads the data and needs TensorFlow: ``pip install
'jaxformers[tf]'`` then ``tfds build conll2003 --file_format=array_record`` (or a ``data.data_dir``
that already holds it). Offline, the run stops with an error that says so; a local copy of the
CoNLL-2003 files works too: ``--set data.corpus=train.txt --set data.val_corpus=valid.txt``.

Recipe (Devlin et al. 2019, section 5.3 and appendix A.3): the cased model, WordPiece with the
first piece of each word labelled and the rest ignored, a linear classifier on every token, no
CRF; batch 32, lr 5e-5, 3 epochs of 14,041 sentences (1,317 steps), 10% warmup then linear decay,
dropout 0.1, sequence length 128 (a longer sentence's cut words count as "O" predictions, see
``jaxformers.tasks.token_classification``). The paper reports 96.4 dev / 92.4 test F1 for
BERT-base (fine-tuning approach, Table 7); it fed each sentence with its surrounding document
context ("maximal document context"), which this one-sentence-per-example recipe does not, so
expect somewhat lower. Not run here (no network, no GPU on this machine).
"""

import dataclasses
import os

from jaxformers.config import (
    CheckpointConfig,
    DataConfig,
    Experiment,
    OptimConfig,
    SampleConfig,
    load_experiment,
)
from jaxformers.models.bert import BertConfig
from jaxformers.tasks.token_classification import TokenClassification

VARIANTS = {
    "default": "CoNLL-2003 NER fine-tuning (TFDS conll2003, needs the network to prepare)",
    "tiny": "two-step smoke test on the offline plays data (the tests run it)",
}

PLAYS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bert_shakespeare_ner.py")
# TFDS conll2003's class names, in its id order (the dataset's own, also transformers' order).
LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


def get_config(variant: str = "default") -> Experiment:
    exp = Experiment(
        name="bert_conll2003",
        task=TokenClassification(labels=LABELS, eval_split="dev"),
        model=BertConfig.preset(
            "base",
            architecture="BertForTokenClassification",
            num_labels=len(LABELS),
            vocab_size=28996,  # bert-base-cased
        ),  # fmt: skip
        data=DataConfig(
            corpus="tfds:conll2003", tokenizer="bert-base-cased", lowercase=False, seq_len=128
        ),
        optim=OptimConfig(
            lr=5e-5,
            warmup_steps=132,
            schedule="linear",
            end_lr_ratio=0.0,
            weight_decay=0.01,
            b2=0.999,
            eps=1e-6,
            clip_norm=1.0,
        ),
        checkpoint=CheckpointConfig(every=500, keep=2),
        sample=SampleConfig(max_new_tokens=0),
        batch_size=32,
        steps=1317,
        eval_every=439,
        eval_batches=0,
        log_every=50,
    )
    if variant == "tiny":
        # The offline plays data (O / B-PER / I-PER, a subset of these labels) at the plays
        # experiment's tiny size, with this file's label set.
        tiny = load_experiment(PLAYS, "tiny")
        exp = dataclasses.replace(
            tiny,
            name=exp.name,
            task=dataclasses.replace(tiny.task, labels=LABELS),
            model=dataclasses.replace(tiny.model, num_labels=len(LABELS)),
        )
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; choose default or tiny")
    return exp


if __name__ == "__main__":
    from jaxformers.cli import run_experiment_file

    run_experiment_file(__file__)
