"""BERT pretraining (masked LM + next-sentence prediction) on the embedded Shakespeare corpus, CPU.

Launch:
    jaxformers train experiments/bert_shakespeare.py --workdir /tmp/bert_shakespeare
    ... --variant tiny        (two-step smoke test used by the tests)

Data as google-research/bert builds it (create_pretraining_data.py's algorithm, per document while
training: jaxformers.data.streaming): WordPiece trained on the corpus, sentence pairs with 50%
random B (a B from another play), 15% masking 80/10/10, dupe factor 20 (epoch e uses pass e % 20).
The measured figures below are of the earlier build-everything-first pipeline (one random stream
through the corpus); the streamed pairs are drawn per document, the same algorithm. Sized for 2
CPU cores: BERT-tiny (2 layers, 128 wide), 64-token pairs (at most 10 predictions) in batches of
128, 8,000 steps.

Measured (2026-11-26, 2-core CPU): 0.98M params, 27,866,368 train tokens (435,412 pairs, 2.35
epochs), 67.0 min wall of which 15 min shared the CPU with a test run (about 55 min idle, 2.5
steps/s), 16,618 tokens/s on average, 1.5 GB peak RSS. Held-out eval (2,048 pairs):
  step                1000   2000   3000   4000   5000   6000   7000   8000
  MLM accuracy %      23.9   30.6   33.8   34.9   35.8   36.4   37.2   37.1   (chance 1/4096)
  NSP loss           0.665  0.667  0.666  0.609  0.591  0.592  0.575  0.568  (class prior 0.6815)
  NSP accuracy %      57.6   56.4   58.3   65.1   67.3   68.7   68.9   69.5
References on the same eval pairs (python benchmarks/nsp_baselines.py --workdir DIR): always
"random B" 57.6%; "next iff A and B share >= 4 word pieces" 63.4%; a bag-of-words logistic
regression 61.0%. Final NSP is 11.9 points above the majority class (one standard error: 1.1).
That run reused an earlier run's WordPiece vocabulary (train_wordpiece is not deterministic, see
huggingface/tokenizers#1794), so a fresh run's figures differ a little.

NSP plateaus for ~3,000 steps, then jumps (the accuracy panel of loss.png shows it). Every play is
one document, so a random B is another play's lines in the same verse: only shared names and
words give it away, and BERT must learn to compare its two segments, a skill that emerges late.
Shorter runs stay at chance: BERT-mini (4 x 256, dupe 5) for 1,200 steps ended at MLM 29.8%, NSP
59.1%; BERT-tiny for 1,500 steps at NSP 59.4%; BERT-tiny on NSP alone for 1,000 steps at 55.3%.
"""

import dataclasses

from jaxformers.config import CheckpointConfig, DataConfig, Experiment, OptimConfig, SampleConfig
from jaxformers.models.bert import BertConfig
from jaxformers.tasks import MLMNSP

# The variants (--variant NAME; --list-variants), the default first.
VARIANTS = {
    "default": "BERT-tiny MLM+NSP on the embedded corpus, sized for 2 CPU cores",
    "tiny": "two-step smoke test (the tests run it)",
}


def get_config(variant: str = "default") -> Experiment:
    exp = Experiment(
        name="bert_shakespeare",
        task=MLMNSP(
            max_predictions_per_seq=10, masked_lm_prob=0.15, short_seq_prob=0.1, dupe_factor=20
        ),
        model=BertConfig.preset(
            "tiny",
            vocab_size=4096,
            max_position_embeddings=128,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        data=DataConfig(corpus="shakespeare", tokenizer="wordpiece", vocab_size=4096, seq_len=64),
        optim=OptimConfig(
            lr=1e-3,
            warmup_steps=50,
            schedule="linear",
            end_lr_ratio=0.0,
            weight_decay=0.01,
            b2=0.999,
            eps=1e-6,
            clip_norm=1.0,
        ),
        checkpoint=CheckpointConfig(every=2000, keep=2),
        sample=SampleConfig(max_new_tokens=0),
        batch_size=128,
        steps=8000,
        eval_every=1000,
        eval_batches=16,
        log_every=10,
    )
    if variant == "tiny":
        exp = exp.smoke_test(
            model=BertConfig.preset(
                "tiny",
                num_hidden_layers=1,
                hidden_size=32,
                num_attention_heads=2,
                intermediate_size=37,
                vocab_size=512,
                max_position_embeddings=32,
            ),
            data=dataclasses.replace(exp.data, vocab_size=512, seq_len=32),
            task=dataclasses.replace(exp.task, max_predictions_per_seq=5, dupe_factor=1),
        )
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; choose default or tiny")
    return exp


if __name__ == "__main__":
    from jaxformers.cli import run_experiment_file

    run_experiment_file(__file__)
