"""BERT pretraining (masked LM + next-sentence prediction) on the embedded Shakespeare corpus, CPU.

Launch:
    jaxformers train experiments/bert_shakespeare.py --workdir /tmp/bert_shakespeare
    ... --variant tiny        (two-step smoke test used by the tests)

Data exactly as google-research/bert builds it (create_pretraining_data.py): WordPiece trained on
the corpus, sentence pairs with 50% random B, 15% masking 80/10/10, max 20 predictions per 128
tokens, dupe_factor 5. Sized for: 2 CPU cores, minutes.
Measured (2026-11-26, 2-core CPU shared with other jobs: 13.7 min wall, 1,573 tokens/s): 4.38M
params, 8,122,880 train tokens (63,460 instances). Held-out eval (256 sequences) at steps
100/200/300: MLM accuracy 7.3% / 11.8% / 12.9% (chance 1/4096), NSP accuracy 53.1% / 46.9% / 53.1%,
i.e. NSP is still at chance (about 57% of pairs have a random B): 300 steps are too few for NSP.
"""

import dataclasses

from jaxformers.config import CheckpointConfig, DataConfig, Experiment, OptimConfig, SampleConfig
from jaxformers.models.bert import BertConfig


def get_config(variant: str = "default") -> Experiment:
    exp = Experiment(
        name="bert_shakespeare",
        objective="mlm_nsp",
        model=BertConfig.preset("mini", vocab_size=4096, max_position_embeddings=128,
                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        data=DataConfig(corpus="shakespeare", tokenizer="wordpiece", vocab_size=4096, seq_len=128,
                        max_predictions_per_seq=20, masked_lm_prob=0.15, short_seq_prob=0.1, dupe_factor=5),
        optim=OptimConfig(lr=1e-3, warmup_steps=50, schedule="linear", end_lr_ratio=0.0, weight_decay=0.01,
                          b2=0.999, eps=1e-6, clip_norm=1.0),
        checkpoint=CheckpointConfig(every=500, keep=2),
        sample=SampleConfig(max_new_tokens=0),
        batch_size=32,
        steps=300,
        eval_every=100,
        eval_batches=8,
        log_every=10,
    )
    if variant == "tiny":
        exp = dataclasses.replace(
            exp,
            model=BertConfig.preset("tiny", num_hidden_layers=1, hidden_size=32, num_attention_heads=2,
                                    intermediate_size=37, vocab_size=512, max_position_embeddings=32),
            data=dataclasses.replace(exp.data, vocab_size=512, seq_len=32, max_predictions_per_seq=5, dupe_factor=1),
            batch_size=8, steps=2, eval_every=0, eval_batches=1, log_every=1,
            checkpoint=CheckpointConfig(every=1, keep=2),
        )
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; choose default or tiny")
    return exp


if __name__ == "__main__":
    from jaxformers.cli import run_experiment_file

    run_experiment_file(__file__)
