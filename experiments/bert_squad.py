"""Fine-tuning BERT for extractive question answering on SQuAD v1.1 (TFDS ``squad``).

Launch (weights from a Hugging Face-format BERT dir with vocab.txt, or a bert_* training workdir):
    jaxformers train experiments/bert_squad.py --workdir /tmp/squad \
        --set init_from=/path/to/bert-base-uncased --set data.tokenizer=/path/to/bert-base-uncased
    jaxformers answer --model /tmp/squad --question "..." --context "..."
    ... --variant plays      (offline: "Who says ...?" questions on the embedded plays)
    ... --variant tiny       (two-step smoke test of plays, used by the tests)

Recipe (Devlin et al. 2019, section 4.2, SQuAD v1.1): batch 32, lr 5e-5, 3 epochs; as
google-research/bert's run_squad.py: windows of 384 pieces with doc stride 128, questions cut to
64 pieces, answers of at most 30 pieces from the 20 best start and end logits, AdamW (weight decay
0.01, eps 1e-6), 10% linear warmup then linear decay, dropout 0.1. The 87,599 training questions
make about 88,600 windows: 3 epochs are about 8,310 steps (warmup 831; ``--set epochs=3`` counts
them from the prepared windows). The
paper's figure for BERT-base (Table 2, dev): 80.8 exact match / 88.5 F1. Preparing squad needs
TensorFlow and the network (``pip install 'jaxformers[tf]'``, then ``tfds build squad
--file_format=array_record``); without them the run stops with an error that says so. No figure
is claimed for it: not run on this project's 2-core CPU.

``plays`` runs offline on tests/data/squad_plays_{train,dev}.json (written by
tests/data/make_squad_plays.py): questions ``Who says "<five words of a speech>"?`` over passages
of four speeches of the 38 embedded plays, answered by the speaker's name as printed in the
passage; 1,488 training questions from five passages of each play, 304 dev questions from a sixth,
later passage (unseen text, speakers seen in training). Answering with the speaker of a random
speech of the passage scores 45.1% exact match (the first speaker: 46.7%): only more shows the
model matching the quote. A 2-layer, 128-wide BERT from scratch with a cased 4,096-piece WordPiece
vocabulary trained on the training file; windows of 128 pieces, stride 64, questions cut to 32.
Measured (2026-12-01, this project's 2-core CPU, 508 s in all, 12,483 tokens/s): dev exact match
21.7%, F1 26.9 over all 304 dev questions after 1,500 steps (27.6 / 33.2 at step 1,000; training
loss 2.28 at step 50 -> 0.54), below the random-speaker baseline: from scratch on 1,488 questions
the model memorises rather than learns to find the quote. Dev passages from unseen plays (an
earlier split) gave 2.4% (uncased vocabulary) and 8.2% (cased, step 500).
"""

import dataclasses
import os

from jaxformers.config import CheckpointConfig, DataConfig, Experiment, OptimConfig, SampleConfig
from jaxformers.models.bert import BertConfig
from jaxformers.tasks import QuestionAnswering

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "data")
PLAYS = {s: os.path.normpath(os.path.join(DATA, f"squad_plays_{s}.json")) for s in ("train", "dev")}

# The variants (--variant NAME; --list-variants), the default first.
VARIANTS = {
    "default": "SQuAD v1.1 fine-tuning of BERT-base (TFDS squad, needs the network to prepare)",
    "plays": "offline: 'Who says ...?' questions on the embedded plays, a small BERT from scratch",
    "tiny": "two-step smoke test of plays (the tests run it)",
}


def get_config(variant: str = "default") -> Experiment:
    qa = "BertForQuestionAnswering"
    exp = Experiment(
        name="bert_squad",
        task=QuestionAnswering(
            doc_stride=128, max_query_length=64, max_answer_length=30, n_best=20
        ),
        model=BertConfig.preset("base", architecture=qa),
        data=DataConfig(corpus="tfds:squad", tokenizer="bert-base-uncased", seq_len=384),
        optim=OptimConfig(
            lr=5e-5,
            warmup_steps=831,
            schedule="linear",
            end_lr_ratio=0.0,
            weight_decay=0.01,
            b2=0.999,
            eps=1e-6,
            clip_norm=1.0,
        ),
        checkpoint=CheckpointConfig(every=1000, keep=2),
        sample=SampleConfig(max_new_tokens=0),
        batch_size=32,
        steps=8310,
        eval_every=2000,
        log_every=50,
    )
    if variant in ("plays", "tiny"):
        exp = dataclasses.replace(
            exp,
            task=QuestionAnswering(doc_stride=64, max_query_length=32),
            model=BertConfig.preset(
                "tiny",
                architecture=qa,
                num_attention_heads=4,
                vocab_size=4096,
                max_position_embeddings=128,
            ),
            data=DataConfig(
                corpus=PLAYS["train"],
                val_corpus=PLAYS["dev"],
                tokenizer="wordpiece",
                vocab_size=4096,
                lowercase=False,  # cased: the speakers' names are printed in capitals
                seq_len=128,
            ),
            optim=dataclasses.replace(exp.optim, lr=1e-3, warmup_steps=100),
            steps=1500,
            eval_every=500,
            log_every=50,
        )
    if variant == "tiny":
        exp = exp.smoke_test(
            task=QuestionAnswering(doc_stride=32, max_query_length=16),
            model=BertConfig.preset(
                "tiny",
                architecture=qa,
                num_hidden_layers=1,
                hidden_size=32,
                num_attention_heads=2,
                vocab_size=512,
                max_position_embeddings=64,
            ),
            data=dataclasses.replace(exp.data, vocab_size=512, seq_len=64),
        )
    elif variant not in ("default", "plays"):
        raise ValueError(f"unknown variant {variant!r}; choose default, plays or tiny")
    return exp


if __name__ == "__main__":
    from jaxformers.cli import run_experiment_file

    run_experiment_file(__file__)
