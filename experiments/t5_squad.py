"""Fine-tuning a converted T5.1.1 checkpoint on SQuAD v1.1 as text to text (TFDS ``squad``).

Launch (an HF-format T5.1.1 directory: config.json, model.safetensors, spiece.model; e.g.
google/t5-v1_1-base saved by transformers, or ``jaxformers convert``):
    jaxformers train experiments/t5_squad.py --workdir /tmp/t5_squad \
        --set init_from=/path/to/t5-v1_1-base
    ... --variant tiny        (two-step smoke test on the embedded plays, used by the tests)

Examples: ``"question: <question> context: <paragraph>"`` -> the first reference answer (the T5
paper's prefix); metrics: SQuAD v1.1's official exact match and F1 (answers normalised: lower case,
no punctuation or articles; each prediction scores its best reference) over all 10,570 dev
questions, from greedy generations. The vocabulary is the checkpoint's own spiece.model.

Recipe (Raffel et al. 2020, section 3.1.4 fine-tuning): Adafactor, constant learning rate 1e-3,
batch 128 packed rows of 512 input tokens, dropout 0.1, 2^18 steps with an evaluation every
5,000 (the paper reports the best). Answers get 64 target tokens (longer ones are cut and
counted). Preparing squad needs TensorFlow and the network (``pip install 'jaxformers[tf]'``, then
``tfds build squad --file_format=array_record``); without it the run stops with an error that says
so. Sized for TPU v4-8 / an 80 GB GPU at base size.

The paper's figures (Table 14, T5 v1.0 pretrained on a multi-task mixture then fine-tuned, SQuAD
dev EM / F1): Small 79.10 / 87.24, Base 85.44 / 92.08, Large 86.66 / 93.79, 3B 88.53 / 94.95,
11B 91.26 / 96.22. T5.1.1 was pretrained on C4 only, so these are the reference, not a promise. No
figure is claimed: not run on this project's 2-core CPU.
"""

from jaxformers.tasks.text_to_text import t5_finetune_experiment, who_speaks_smoke_test

VARIANTS = {
    "default": "SQuAD v1.1 from a converted T5.1.1-base checkpoint (TFDS squad, needs init_from)",
    "tiny": "two-step smoke test on the embedded plays' who-speaks task (the tests run it)",
}


def get_config(variant: str = "default"):
    exp = t5_finetune_experiment("t5_squad", "squad", seq_len=512, targets_length=64)
    if variant == "tiny":
        exp = who_speaks_smoke_test(exp)
    elif variant != "default":
        raise ValueError(f"unknown variant {variant!r}; choose default or tiny")
    return exp


if __name__ == "__main__":
    from jaxformers.cli import run_experiment_file

    run_experiment_file(__file__)
