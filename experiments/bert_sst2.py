"""Fine-tuning BERT for sentence classification on GLUE SST-2 (TFDS ``glue/sst2``).

Launch (weights from a Hugging Face-format BERT dir with vocab.txt, or a bert_* training workdir):
    jaxformers train experiments/bert_sst2.py --workdir /tmp/sst2 \
        --set init_from=/path/to/bert-base-uncased --set data.tokenizer=/path/to/bert-base-uncased

Recipe (Devlin et al. 2019, GLUE fine-tuning): batch 32, lr 2e-5, 3 epochs of 67,349 sentences
(6,315 steps), 10% warmup then linear decay, dropout 0.1, sequence length 128. Preparing
glue/sst2 needs TensorFlow and the network (``pip install 'jaxformers[tf]'``); without them the run
stops with an error that says so. The ``genre`` variant runs offline on the embedded corpus instead:
Shakespeare speeches labelled comedy or tragedy; ``tiny`` is its two-step smoke test.
Measured: see README.md.
"""

import dataclasses

from jaxformers.config import CheckpointConfig, DataConfig, Experiment, OptimConfig, SampleConfig
from jaxformers.models.bert import BertConfig
from jaxformers.tasks import Classification

# The variants (--variant NAME; --list-variants), the default first.
VARIANTS = {
    "default": "SST-2 fine-tuning (TFDS glue/sst2, needs the network to prepare)",
    "genre": "offline: comedy or tragedy of Shakespeare speeches",
    "tiny": "two-step smoke test of genre (the tests run it)",
}


def get_config(variant: str = "default") -> Experiment:
    exp = Experiment(
        name="bert_sst2",
        task=Classification(),
        model=BertConfig.preset("base", architecture="BertForSequenceClassification", num_labels=2),
        data=DataConfig(corpus="tfds:glue/sst2", tokenizer="bert-base-uncased", seq_len=128),
        optim=OptimConfig(
            lr=2e-5,
            warmup_steps=631,
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
        steps=6315,
        eval_every=500,
        log_every=50,
    )
    if variant in ("genre", "tiny"):
        exp = dataclasses.replace(
            exp,
            model=BertConfig.preset(
                "mini",
                architecture="BertForSequenceClassification",
                num_labels=2,
                vocab_size=4096,
                max_position_embeddings=128,
            ),
            data=DataConfig(
                corpus="shakespeare_genre", tokenizer="wordpiece", vocab_size=4096, seq_len=64
            ),
            optim=dataclasses.replace(exp.optim, lr=5e-4, warmup_steps=30),
            steps=300,
            eval_every=100,
            eval_batches=16,
            log_every=10,
        )
    if variant == "tiny":
        exp = exp.smoke_test(
            model=BertConfig.preset(
                "tiny",
                architecture="BertForSequenceClassification",
                num_labels=2,
                num_hidden_layers=1,
                hidden_size=32,
                num_attention_heads=2,
                vocab_size=512,
                max_position_embeddings=32,
            ),
            data=dataclasses.replace(exp.data, vocab_size=512, seq_len=32),
        )
    elif variant not in ("default", "genre"):
        raise ValueError(f"unknown variant {variant!r}; choose default, genre or tiny")
    return exp


if __name__ == "__main__":
    from jaxformers.cli import run_experiment_file

    run_experiment_file(__file__)
