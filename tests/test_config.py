"""Run settings are checked when the config is made: a bad value stops before any work, naming
it."""

import dataclasses
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxformers import config, tasks
from jaxformers.config import DataConfig, Experiment, load_experiment
from jaxformers.models.gpt2 import GPT2Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = sorted(
    os.path.join(ROOT, "experiments", f)
    for f in os.listdir(os.path.join(ROOT, "experiments"))
    if f.endswith(".py")
)
GPT2 = os.path.join(ROOT, "experiments", "gpt2_shakespeare.py")
BERT = os.path.join(ROOT, "experiments", "bert_shakespeare.py")
T5 = os.path.join(ROOT, "experiments", "t5_shakespeare.py")

# (experiment, --set key, values that must be refused, the text the message must hold)
BAD = [
    (GPT2, "batch_size", ["0", "-8"], "batch_size"),
    (GPT2, "steps", ["0", "-5"], "steps"),
    (GPT2, "eval_batches", ["-1", "2.5"], "eval_batches"),  # 0 is the whole validation split
    (GPT2, "tokens", ["-1", "1.5"], "tokens"),
    (GPT2, "epochs", ["-1"], "epochs"),
    (GPT2, "eval_every", ["-1"], "eval_every"),
    (GPT2, "log_every", ["0"], "log_every"),
    (GPT2, "seed", ["-1"], "seed"),
    (GPT2, "nan_policy", ["ignore", "STOP"], "nan_policy"),
    (GPT2, "peak_tflops", ["-1.0"], "peak_tflops"),
    (GPT2, "data.seq_len", ["0", "-16"], "data.seq_len"),
    (GPT2, "data.vocab_size", ["-1"], "data.vocab_size"),
    (GPT2, "data.val_fraction", ["1.0", "-0.1", "1.5"], "data.val_fraction"),
    (GPT2, "optim.lr", ["-1", "0"], "optim.lr"),
    (GPT2, "optim.warmup_steps", ["-3"], "optim.warmup_steps"),
    (GPT2, "optim.grad_accum", ["0", "-2"], "optim.grad_accum"),
    (GPT2, "optim.name", ["sgd"], "optim.name"),
    (GPT2, "optim.schedule", ["exponential"], "optim.schedule"),
    (GPT2, "optim.b1", ["1.0", "-0.1"], "optim.b1"),
    (GPT2, "optim.b2", ["1.5"], "optim.b2"),
    (GPT2, "optim.eps", ["0", "-1e-8"], "optim.eps"),
    (GPT2, "optim.clip_norm", ["-1"], "optim.clip_norm"),
    (GPT2, "optim.weight_decay", ["-0.1"], "optim.weight_decay"),
    (GPT2, "optim.end_lr_ratio", ["-0.5", "2"], "optim.end_lr_ratio"),
    (GPT2, "optim.total_steps", ["-1"], "optim.total_steps"),
    (GPT2, "mesh.shape", ["(0,1,1)", "(-1,-1,1)", "(2,2)", "(-2,1,1)"], "mesh.shape"),
    (GPT2, "checkpoint.every", ["0"], "checkpoint.every"),
    (GPT2, "checkpoint.keep", ["0"], "checkpoint.keep"),
    (GPT2, "sample.temperature", ["0", "-1"], "sample.temperature"),
    (GPT2, "sample.max_new_tokens", ["-1"], "sample.max_new_tokens"),
    (GPT2, "sample.top_k", ["-1"], "sample.top_k"),
    (GPT2, "model.n_layer", ["0", "-1"], "n_layer"),
    (GPT2, "model.n_head", ["0"], "n_head"),
    (GPT2, "model.n_embd", ["0"], "n_embd"),
    (GPT2, "model.vocab_size", ["0"], "vocab_size"),
    (GPT2, "model.n_positions", ["0"], "n_positions"),
    (BERT, "model.num_hidden_layers", ["0"], "num_hidden_layers"),
    (BERT, "task.max_predictions_per_seq", ["0"], "task.max_predictions_per_seq"),
    (BERT, "task.masked_lm_prob", ["0", "1.0", "-0.2"], "task.masked_lm_prob"),
    (BERT, "task.short_seq_prob", ["1.5"], "task.short_seq_prob"),
    (BERT, "task.dupe_factor", ["0"], "task.dupe_factor"),
    (T5, "model.num_layers", ["0"], "num_layers"),
    (T5, "task.noise_density", ["0", "1.0"], "task.noise_density"),
    (T5, "task.mean_noise_span_length", ["0.5"], "task.mean_noise_span_length"),
    (T5, "task.targets_length", ["-1"], "task.targets_length"),
    (T5, "task.z_loss", ["-1e-4"], "task.z_loss"),
    (T5, "task.label_smoothing", ["1.0", "-0.1"], "task.label_smoothing"),
]


@pytest.mark.parametrize(
    "path,key,values,words", BAD, ids=[f"{os.path.basename(p)}:{k}" for p, k, _, _ in BAD]
)
def test_bad_setting_stops_with_its_name(path, key, values, words):
    for value in values:
        with pytest.raises(ValueError, match=words.replace(".", r"\.")):
            load_experiment(path, "tiny", [f"{key}={value}"])


@settings(max_examples=60, deadline=None)
@given(case=st.sampled_from(BAD), data=st.data())
def test_random_bad_settings_are_refused_among_good_ones(case, data):
    """A bad value stops the config whatever valid settings come with it."""
    path, key, values, words = case
    good = data.draw(
        st.lists(
            st.sampled_from(
                [
                    "steps=3",
                    "batch_size=16",
                    "optim.lr=1e-3",
                    "optim.warmup_steps=0",
                    "data.seed=7",
                    "eval_batches=2",
                    "log_every=5",
                    "checkpoint.keep=1",
                    "mesh.shape=(1,-1,1)",
                    "optim.grad_accum=2",
                ]
            ),
            max_size=4,
            unique=True,
        )
    )
    settings_ = [s for s in good if s.split("=")[0] != key] + [
        f"{key}={data.draw(st.sampled_from(values))}"
    ]
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        load_experiment(path, "tiny", data.draw(st.permutations(settings_)))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
@pytest.mark.parametrize("variant", ["default", "tiny"])
def test_every_experiment_is_valid(path, variant):
    exp = load_experiment(path, variant)
    assert exp.task.name in tasks.TASKS and exp.steps >= 1


def test_batch_must_divide_into_microbatches():
    with pytest.raises(ValueError, match="batch_size=10 must divide into optim.grad_accum=4"):
        load_experiment(GPT2, "tiny", ["batch_size=10", "optim.grad_accum=4"])


def test_task_defaults_to_the_familys_and_settings_reach_it():
    exp = Experiment(name="x", model=GPT2Config.preset("tiny"))
    assert isinstance(exp.task, tasks.CausalLM) and exp.objective == "causal_lm"
    bert = load_experiment(BERT, "tiny", ["task.dupe_factor=3", "task.whole_word_mask=true"])
    assert bert.task.dupe_factor == 3 and bert.task.whole_word_mask is True
    with pytest.raises(ValueError, match="unknown setting 'task.noise_density'"):
        load_experiment(BERT, "tiny", ["task.noise_density=0.2"])
    with pytest.raises(ValueError, match="is not a task"):
        dataclasses.replace(exp, task="causal_lm")


def test_data_config_holds_no_task_fields():
    names = {f.name for f in dataclasses.fields(DataConfig)}
    for task in tasks.TASKS.values():
        assert not names & {f.name for f in dataclasses.fields(task)}, task.__name__
    assert set(config.OPTIMIZERS) == {"adamw", "adafactor"}


def test_smoke_test_size():
    exp = load_experiment(GPT2, "default").smoke_test(steps=3)
    assert (exp.batch_size, exp.steps, exp.eval_batches, exp.checkpoint.every) == (8, 3, 1, 1)


@pytest.mark.parametrize(
    "kind,wrong", [("wordpiece", "bpe"), ("sentencepiece", "bpe"), ("bpe", "wordpiece")]
)
def test_tokenizer_of_another_family_is_refused(kind, wrong, tmp_path):
    """``data.tokenizer="bpe"`` once silently meant WordPiece for BERT and SentencePiece for T5."""
    from jaxformers.data import tokenizers

    with pytest.raises(ValueError, match=f"this model uses a {kind} tokenizer"):
        tokenizers.load_or_train(
            kind, wrong, str(tmp_path / "tok"), lambda: iter(["some text"]), 600
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tokenizers.load_or_train(
            kind, str(tmp_path / "missing"), str(tmp_path / "tok2"), lambda: iter([]), 600
        )


def test_length_from_tokens_or_epochs_and_disagreement_named():
    """tokens=N / epochs=X on the command line replace the file's steps; the step count is
    rounded up; two lengths that disagree are refused naming both."""
    exp = load_experiment(GPT2, "tiny", ["tokens=1000"])
    assert (exp.steps, exp.tokens) == (0, 1000)
    assert exp.resolve_steps(256, 10.0).steps == 4  # ceil(1000 / 256)
    exp = load_experiment(GPT2, "tiny", ["epochs=2.5"])
    assert exp.resolve_steps(256, 10.0).steps == 25
    assert load_experiment(GPT2, "tiny").resolve_steps(256, 10.0).steps == 2
    agree = load_experiment(GPT2, "tiny", ["steps=4", "tokens=1000"])
    assert agree.resolve_steps(256, 10.0).steps == 4
    with pytest.raises(ValueError, match=r"steps=5 -> 5 steps; tokens=1,000 .* -> 4 steps"):
        load_experiment(GPT2, "tiny", ["steps=5", "tokens=1000"]).resolve_steps(256, 10.0)
    with pytest.raises(ValueError, match="steps=N, tokens=N or epochs=X"):
        load_experiment(GPT2, "tiny", ["steps=0"])


def test_task_by_name_and_an_unknown_task_named():
    from jaxformers.tasks import MLMNSP

    # the experiment's own task settings (dupe_factor 20 ...) give way to the task's defaults
    assert load_experiment(BERT, "tiny", ["task=mlm_nsp"]).task == MLMNSP()
    with pytest.raises(ValueError, match=r"unknown task 'mlm'; choose one of causal_lm, .*mlm_nsp"):
        load_experiment(GPT2, "tiny", ["task=mlm"])
