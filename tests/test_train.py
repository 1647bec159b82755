"""The training loop: exact resume, gradient accumulation, schedule, weight decay, checkpoints,
exports, the workdir lock, metrics files, overrides and non-finite losses.

Runs the tiny variant of experiments/gpt2_shakespeare.py on a small slice of the corpus written
to a temporary file, so the real data pipeline (TFDS preparation, BPE training, token files,
index-based batches) is what training reads.
"""

import dataclasses
import fcntl
import glob
import importlib.util
import json
import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import ROOT, assert_close, without_key_bias

from jaxformers import checkpoint, train
from jaxformers.config import CheckpointConfig, Experiment, MeshConfig, OptimConfig, apply_overrides
from jaxformers.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxformers.tasks.causal_lm import lm_data


def tiny_experiment(**kw) -> Experiment:
    spec = importlib.util.spec_from_file_location(
        "gpt2_shakespeare_exp", os.path.join(ROOT, "experiments", "gpt2_shakespeare.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    exp = mod.get_config("tiny")
    return dataclasses.replace(exp, **kw)


def resume_experiment(corpus, **kw):
    exp = tiny_experiment()
    return dataclasses.replace(
        exp,
        model=dataclasses.replace(exp.model, resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1),
        data=dataclasses.replace(exp.data, corpus=corpus),
        optim=dataclasses.replace(exp.optim, warmup_steps=2),
        steps=6,
        log_every=1,
        peak_tflops=1.0,
        progress=False,
        **kw,
    )


def read_metrics(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, corpus):
    """6 steps in one go (dropout on: the resumed run must draw the same masks)."""
    wd = str(tmp_path_factory.mktemp("straight"))
    exp = resume_experiment(corpus)
    assert exp.model.resid_pdrop > 0 and exp.checkpoint.every == 1 and exp.checkpoint.keep == 2
    tr = train.Trainer(exp, wd)
    result = tr.run()
    return wd, exp, tr, result


@pytest.mark.slow
def test_resume_is_exact(tmp_path, corpus, straight):
    _, exp, _, full = straight
    assert sorted(full.train_losses) == [1, 2, 3, 4, 5, 6]
    wd = str(tmp_path)
    first = train.Trainer(exp, wd).run(stop_at=3)
    assert first.final_step == 3 and sorted(first.train_losses) == [1, 2, 3]
    assert not os.path.exists(os.path.join(wd, "params"))  # exported only when the run is finished
    second = train.Trainer(exp, wd).run()
    assert second.steps_run == 3 and second.final_step == 6
    assert sorted(second.train_losses) == [4, 5, 6]
    for s in (1, 2, 3):
        assert first.train_losses[s] == full.train_losses[s]
    for s in (4, 5, 6):
        assert second.train_losses[s] == full.train_losses[s], s
    # The losses are not all alike (a resume that replayed batch 1 would not match anyway).
    assert len({full.train_losses[s] for s in range(1, 7)}) == 6
    # Params equal too.
    a = checkpoint.load_params(os.path.join(wd, "params"))
    b = checkpoint.load_params(os.path.join(straight[0], "params"))
    jax.tree.map(np.testing.assert_array_equal, a, b)
    # metrics.jsonl of the resumed workdir holds each step once.
    steps = [r["step"] for r in read_metrics(wd) if r["split"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_metrics_files(straight):
    wd, exp, _, result = straight
    recs = read_metrics(wd)
    tr_recs = [r for r in recs if r["split"] == "train"]
    assert [r["step"] for r in tr_recs] == [1, 2, 3, 4, 5, 6]
    for r in tr_recs:
        assert {"loss", "accuracy", "grad_norm", "lr"} <= set(r)
        assert r["loss"] == pytest.approx(result.train_losses[r["step"]], rel=1e-6)
        assert 0.0 <= r["accuracy"] <= 1.0
    # The learning rate logged at step n is the schedule at update n - 1 (warmup 2, then cosine).
    schedule = train.make_schedule(exp.optim, exp.steps)
    for r in tr_recs:
        assert r["lr"] == pytest.approx(float(schedule(r["step"] - 1)), rel=1e-6)
    assert tr_recs[0]["lr"] == 0.0 and tr_recs[1]["lr"] == pytest.approx(exp.optim.lr / 2)
    ev = [r for r in recs if r["split"] == "eval"]
    assert len(ev) == 1 and ev[0]["step"] == 6 and math.isfinite(ev[0]["loss"])
    assert ev[0]["loss"] == pytest.approx(result.eval_metrics["loss"])
    events = glob.glob(os.path.join(wd, "tensorboard", "events.out.tfevents.*"))
    assert events and os.path.getsize(events[0]) > 0


@pytest.mark.slow
def test_checkpoints_keep_and_params_export(straight):
    wd, exp, tr, _ = straight
    ckpt_dir = os.path.join(wd, "checkpoints")
    ck = checkpoint.Checkpointer(ckpt_dir, keep=exp.checkpoint.keep)
    try:
        assert ck.all_steps() == [5, 6]  # every=1, keep=2
        on_disk = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
        assert on_disk == [5, 6]
        state, step = tr.restore_or_init(ck)
    finally:
        ck.close()
    assert step == 6 and int(state.step) == 6
    exported = checkpoint.load_params(os.path.join(wd, "params"))
    flat_a, flat_b = (
        jax.tree_util.tree_leaves_with_path(exported),
        jax.tree_util.tree_leaves_with_path(state.params),
    )
    assert [k for k, _ in flat_a] == [k for k, _ in flat_b]
    for (k, a), (_, b) in zip(flat_a, flat_b):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(k))
    # The export is what training produced, not the initialisation.
    init = tr.init_state().params
    assert not np.array_equal(
        np.asarray(init["wte"]["embedding"]), np.asarray(exported["wte"]["embedding"])
    )
    assert os.path.isfile(os.path.join(wd, "model.json"))


def test_load_params_missing_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no exported params"):
        checkpoint.load_params(str(tmp_path / "nothing"))


# ----------------------------------------------------------------------------- accumulation


def small_experiment(**kw):
    base = dict(
        name="train_test",
        model=GPT2Config(
            vocab_size=97,
            n_positions=37,
            n_embd=60,
            n_layer=1,
            n_head=5,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        ),
        optim=OptimConfig(lr=3e-3, warmup_steps=1),
        mesh=MeshConfig((1, 1, 1)),
        checkpoint=CheckpointConfig(every=1000, keep=1, async_save=False),
        batch_size=8,
        steps=3,
        eval_every=0,
        eval_batches=1,
        log_every=1,
        peak_tflops=1.0,
        progress=False,
    )
    base.update(kw)
    return Experiment(**base)


def synthetic_data(batch=8, accum=1):
    rng = np.random.default_rng(99)
    return lm_data(
        None,
        rng.integers(0, 97, 3000).astype(np.uint16),
        rng.integers(0, 97, 300).astype(np.uint16),
        16,
        batch,
        accum,
        0,
    )


@pytest.mark.slow
def test_grad_accumulation_equals_full_batch(tmp_path):
    one = jax.devices()[:1]
    results, params = [], []
    for accum in (1, 2):
        exp = small_experiment(
            optim=OptimConfig(lr=3e-3, warmup_steps=1, grad_accum=accum), log_every=2
        )
        wd = str(tmp_path / f"accum{accum}")
        data = synthetic_data(accum=accum)
        assert data.train_batch(0)["inputs"].shape == (accum, 8 // accum, 16)
        results.append(train.Trainer(exp, wd, data=data, devices=one).run())
        params.append(checkpoint.load_params(os.path.join(wd, "params")))
    a, b = results
    assert (
        sorted(a.train_losses) == sorted(b.train_losses) == [2, 3]
    )  # log_every=2, and the last step
    assert_close(b.train_losses, a.train_losses, rel=1e-5)
    flat_a = jax.tree_util.tree_leaves_with_path(without_key_bias(params[0]))
    flat_b = jax.tree_util.tree_leaves_with_path(without_key_bias(params[1]))
    for (k, x), (_, y) in zip(flat_a, flat_b):
        assert np.max(np.abs(x - y)) <= 1e-5 * np.max(np.abs(x)), jax.tree_util.keystr(k)


# ----------------------------------------------------------------------------- schedule, decay


def test_warmup_cosine_schedule_by_hand():
    o = OptimConfig(lr=2e-3, warmup_steps=10, schedule="cosine", end_lr_ratio=0.1)
    sched = train.make_schedule(o, 50)

    def hand(s):
        if s < 10:
            return 2e-3 * s / 10
        t = min(s - 10, 40)
        return 2e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 40)))

    for s in (0, 1, 5, 9, 10, 11, 20, 30, 49, 50, 70):
        assert float(sched(s)) == pytest.approx(hand(s), rel=1e-5, abs=1e-12), s
    assert float(sched(10)) == pytest.approx(2e-3)
    assert float(sched(50)) == pytest.approx(2e-4)


def test_linear_and_constant_schedules_by_hand():
    lin = train.make_schedule(
        OptimConfig(lr=1e-3, warmup_steps=4, schedule="linear", end_lr_ratio=0.0), 14
    )
    for s, want in [(0, 0.0), (2, 5e-4), (4, 1e-3), (9, 5e-4), (14, 0.0)]:
        assert float(lin(s)) == pytest.approx(want, abs=1e-9), s
    const = train.make_schedule(OptimConfig(lr=1e-3, warmup_steps=4, schedule="constant"), 14)
    for s, want in [(1, 2.5e-4), (4, 1e-3), (100, 1e-3)]:
        assert float(const(s)) == pytest.approx(want, abs=1e-9), s
    with pytest.raises(ValueError, match="schedule"):
        train.make_schedule(OptimConfig(schedule="cosin"), 10)


@pytest.mark.parametrize("scan", [False, True])
def test_decay_mask_excludes_biases_and_norms(scan):
    cfg = GPT2Config(
        vocab_size=97, n_positions=37, n_embd=60, n_layer=2, n_head=5, scan_layers=scan
    )
    abstract = jax.eval_shape(
        lambda: GPT2LMHeadModel(cfg).init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    )
    import flax.linen as nn

    params = nn.meta.unbox(abstract)["params"]
    mask = train.decay_mask(params)
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert flat["['wte']['embedding']"] is True
    decayed = {k for k, v in flat.items() if v}
    not_decayed = {k for k, v in flat.items() if not v}
    # Every kernel decays; no bias and nothing of a LayerNorm does (also when stacked [L, ...]).
    assert all(k.endswith("['kernel']") or "embedding" in k for k in decayed)
    assert all(k.endswith("['bias']") or "['ln" in k for k in not_decayed)
    kernels = [k for k in flat if k.endswith("['kernel']")]
    assert kernels and all(flat[k] for k in kernels)
    assert all(not flat[k] for k in flat if k.endswith("['bias']") or k.endswith("['scale']"))
    n_blocks = 1 if scan else 2
    assert len(kernels) == 4 * n_blocks


def test_weight_decay_applied_to_decayed_leaves_only():
    """Zero gradients: AdamW's step is then decoupled decay alone, lr * wd * p, on the mask."""
    o = OptimConfig(lr=0.5, warmup_steps=0, schedule="constant", weight_decay=0.1, clip_norm=1.0)
    tx = train.make_optimizer(o, train.make_schedule(o, 10))
    params = {
        "h_0": {
            "mlp": {"wi": {"kernel": jnp.full((3, 5), 2.0), "bias": jnp.full((5,), 2.0)}},
            "ln_1": {"scale": jnp.full((3,), 2.0), "bias": jnp.full((3,), 2.0)},
        },
        "wte": {"embedding": jnp.full((7, 3), 2.0)},
    }
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    assert np.allclose(new["h_0"]["mlp"]["wi"]["kernel"], 2.0 - 0.5 * 0.1 * 2.0)
    assert np.allclose(new["wte"]["embedding"], 2.0 - 0.5 * 0.1 * 2.0)
    for leaf in (
        new["h_0"]["mlp"]["wi"]["bias"],
        new["h_0"]["ln_1"]["scale"],
        new["h_0"]["ln_1"]["bias"],
    ):
        assert np.array_equal(leaf, jnp.full(leaf.shape, 2.0))


# ----------------------------------------------------------------------------- overrides, lock, NaN


def test_overrides_apply_and_unknown_keys_list_valid_ones():
    exp = small_experiment()
    out = apply_overrides(
        exp, ["optim.lr=1e-2", "steps=7", "mesh.shape=(2,2,2)", "progress=false", "model.n_layer=3"]
    )
    assert (
        out.optim.lr == 1e-2
        and out.steps == 7
        and out.mesh.shape == (2, 2, 2)
        and out.progress is False
    )
    assert out.model.n_layer == 3
    with pytest.raises(ValueError) as e:
        apply_overrides(exp, ["optim.lrr=1e-3"])
    assert "'optim.lrr'" in str(e.value) or "lrr" in str(e.value)
    assert "valid keys" in str(e.value) and "lr" in str(e.value) and "warmup_steps" in str(e.value)
    with pytest.raises(ValueError, match="valid keys.*batch_size"):
        apply_overrides(exp, ["batchsize=3"])
    with pytest.raises(ValueError, match="steps"):
        apply_overrides(exp, ["steps=many"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(exp, ["steps"])


def test_workdir_lock_held_elsewhere(tmp_path):
    tr = train.Trainer(
        small_experiment(), str(tmp_path), data=synthetic_data(), devices=jax.devices()[:1]
    )
    with open(tmp_path / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="in use"):
            tr.run()
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")


@pytest.mark.slow
def test_non_finite_loss_stops_with_floating_point_error(tmp_path):
    exp = small_experiment(optim=OptimConfig(lr=1e30, warmup_steps=0, schedule="constant"), steps=4)
    tr = train.Trainer(exp, str(tmp_path), data=synthetic_data(), devices=jax.devices()[:1])
    with pytest.raises(FloatingPointError, match="loss is"):
        tr.run()
    train_recs = [r for r in read_metrics(str(tmp_path)) if r["split"] == "train"]
    assert [r["step"] for r in train_recs] == [1]  # the finite first step was logged, nothing after
    assert not os.path.exists(os.path.join(str(tmp_path), "params"))


def test_token_cross_entropy_matches_optax_and_argmax():
    """The shared-max cross-entropy equals optax's, its gradient is softmax - one-hot, and its
    accuracy equals argmax's (random logits have no ties)."""
    from jaxformers.tasks.base import token_cross_entropy

    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(0, 3, (3, 5, 97)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 97, (3, 5)), jnp.int32)
    targets = targets.at[0, :3].set(jnp.argmax(logits[0, :3], -1))  # some correct ones
    w = jnp.asarray(rng.integers(0, 2, (3, 5)), jnp.float32)
    nll, correct = token_cross_entropy(logits, targets, w)
    ref = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    np.testing.assert_allclose(nll, jnp.sum(ref * w), rtol=1e-6)
    assert float(correct) == float(jnp.sum((jnp.argmax(logits, -1) == targets) * w))
    g = jax.grad(lambda z: token_cross_entropy(z, targets, w)[0])(logits)
    g_ref = (jax.nn.softmax(logits) - jax.nn.one_hot(targets, 97)) * w[..., None]
    np.testing.assert_allclose(g, g_ref, atol=1e-6)


@pytest.mark.parametrize("eval_batches", [0, 2])
def test_eval_scores_every_validation_token_once(tmp_path, eval_batches):
    """eval_batches=0: the mean NLL over every validation token after the first, exactly once
    (299 targets: 18 full windows of 16 and one of 11, padded), equal to a direct forward pass
    of the model over the stream; eval_batches=2: the first 2 x 8 windows only."""
    exp = small_experiment(eval_batches=eval_batches)
    data = synthetic_data()
    tr = train.Trainer(exp, str(tmp_path), data=data, devices=jax.devices()[:1])
    state = tr.init_state()
    _, eval_fn = tr.compiled_steps()
    got = tr.evaluate(state, eval_fn)
    stream = np.asarray(data.val.windows.tokens, np.int64)
    n = len(stream) - 1 if eval_batches == 0 else 2 * 8 * 16
    # The reference: every window of 16 targets as one batch (the last one cut short).
    starts = range(0, n, 16)
    x = np.stack([np.resize(stream[s : min(s + 16, n)], 16) for s in starts])
    logits = np.asarray(jax.jit(state.apply_fn)({"params": state.params}, x), np.float64)
    nll = []
    for row, s in zip(logits, starts, strict=True):
        y = stream[s + 1 : min(s + 17, n + 1)]
        top = row.max(-1, keepdims=True)
        logp = row - top - np.log(np.exp(row - top).sum(-1, keepdims=True))
        nll += list(-logp[np.arange(len(y)), y])
    assert len(nll) == n
    np.testing.assert_allclose(got["loss"], np.mean(nll), rtol=1e-5)


def test_progress_in_a_log_file_is_one_plain_line_per_log_interval(tmp_path, capfd):
    """stderr not a terminal (a log file; here pytest's capture): no carriage-return bar, one
    line per log interval with the step, loss, tokens/s, MFU and ETA."""
    exp = small_experiment(steps=4, log_every=2, progress=True)
    train.Trainer(exp, str(tmp_path), data=synthetic_data(), devices=jax.devices()[:1]).run()
    out, err = capfd.readouterr()
    assert "\r" not in out + err
    lines = [ln for ln in out.splitlines() if ln.startswith("step ")]
    assert [ln.split()[1] for ln in lines] == ["2/4", "4/4"]
    for ln in lines:
        assert re.fullmatch(r"step \d/4 loss \d+\.\d{3} tok/s=[\d,]+ MFU=[\d.]+% ETA \d+:\d\d", ln)
