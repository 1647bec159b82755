"""Sharded training equals single-device training; parameters land where the rules say.

The reference for every mesh is the same experiment trained on one device (mesh (1, 1, 1) over
``jax.devices()[:1]``). The model is small and odd-sized: 5 heads and a vocabulary of 97 do not
divide the tensor axis of (2, 2, 2), so uneven shards are exercised too.
"""

import json
import os
import subprocess
import sys
import warnings

import jax
import numpy as np
import optax
import pytest
from helpers import without_key_bias
from jax.sharding import PartitionSpec as P

import jaxformers
from jaxformers import checkpoint, sharding, train
from jaxformers.config import CheckpointConfig, Experiment, MeshConfig, OptimConfig
from jaxformers.models.gpt2 import GPT2Config, GPT2LMHeadModel
from jaxformers.tasks.causal_lm import CausalLM, lm_data

SEQ, BATCH = 16, 8
# ODD: 5 heads and 97 tokens do not divide a tensor axis of 2 (GPT-2's real vocabulary, 50257,
# does not either). EVEN: the same model with 6 heads and 98 tokens, which divide it.
ODD = dict(vocab_size=97, n_head=5)
EVEN = dict(vocab_size=98, n_head=6)


def experiment(mesh_shape, dims=ODD, **kw):
    base = dict(
        name="sharding_test",
        model=GPT2Config(
            n_positions=37,
            n_embd=60,
            n_layer=1,
            resid_pdrop=0.1,
            embd_pdrop=0.1,
            attn_pdrop=0.1,
            **dims,
        ),
        optim=OptimConfig(lr=3e-3, warmup_steps=1, weight_decay=0.1, clip_norm=1.0),
        mesh=MeshConfig(tuple(mesh_shape)),
        checkpoint=CheckpointConfig(every=1000, keep=1, async_save=False),
        batch_size=BATCH,
        steps=3,
        eval_every=0,
        eval_batches=2,
        log_every=1,
        peak_tflops=1.0,  # no matmul benchmark per run
        progress=False,
    )
    base.update(kw)
    return Experiment(**base)


def synthetic_data(vocab=97, batch=BATCH, accum=1, seed=0):
    """Random token streams behind the real causal-LM data (``tasks.causal_lm.lm_data``), no
    tokenizer needed."""
    rng = np.random.default_rng(1234)
    train_tokens = rng.integers(0, vocab, 4000).astype(np.uint16)
    val_tokens = rng.integers(0, vocab, 400).astype(np.uint16)
    return lm_data(None, train_tokens, val_tokens, SEQ, batch, accum, seed)


def first_gradients(tr):
    """The loss gradient of the initial params on the first batch (no dropout), on ``tr``'s mesh."""
    state = tr.init_state()
    batch = sharding.host_to_global(tr.data.train_batch(0), tr.mesh, leading=1)
    task = tr.objective

    def loss(params):
        mb = jax.tree.map(lambda x: x[0], batch)
        norms = task.normalizers(batch)
        return task.loss(params, state.apply_fn, mb, jax.random.PRNGKey(0), True, norms)[0]

    with tr.mesh_context():
        return jax.tree.map(np.asarray, jax.jit(jax.grad(loss))(state.params))


def without_query_key_bias(params):
    """Params with the query and key biases zeroed (their gradients are compared instead).

    Softmax ignores a bias added to every key, so its gradient is zero up to rounding; the query
    bias's gradient is a sum of differences of nearly equal keys, small and cancelling. Adam
    divides each element's update by that element's own gradient scale, so it turns their
    rounding into lr-sized steps: on this project's CPU (2026-11-30) the first-step query-bias
    gradients of the (2, 2, 2) and one-device runs agree to 3.9e-7 of their largest value, the
    trained query biases only to 1.6e-5. That says nothing about sharding; the gradients do.
    """
    params = without_key_bias(params)
    params["h_0"]["attn"]["qkv"]["bias"][0] = 0.0
    return params


def run(workdir, mesh_shape, dims=ODD, devices=None):
    """Trains 3 steps; returns (losses of steps 1..3, eval loss, exported params, trainer,
    first-step gradients)."""
    exp = experiment(mesh_shape, dims)
    tr = train.Trainer(exp, str(workdir), data=synthetic_data(dims["vocab_size"]), devices=devices)
    assert tr.mesh.devices.size == (len(devices) if devices else len(jax.devices()))
    grads = first_gradients(tr)
    result = tr.run()
    assert result.final_step == 3 and sorted(result.train_losses) == [1, 2, 3]
    params = checkpoint.load_params(os.path.join(str(workdir), "params"))
    return (
        [result.train_losses[s] for s in (1, 2, 3)],
        result.eval_metrics["loss"],
        params,
        tr,
        grads,
    )


def reference(tmp_path_factory, dims):
    assert len(jax.devices()) == 8, "conftest forces 8 CPU devices"
    ref = run(tmp_path_factory.mktemp("single"), (1, 1, 1), dims, devices=jax.devices()[:1])
    losses = ref[0]
    assert all(np.isfinite(losses))
    # Training does something: the loss starts near log(V) for a fresh model and moves.
    assert abs(losses[0] - np.log(dims["vocab_size"])) < 0.5
    assert losses[0] != losses[2]
    return ref


@pytest.fixture(scope="module")
def single_odd(tmp_path_factory):
    return reference(tmp_path_factory, ODD)


@pytest.fixture(scope="module")
def single_even(tmp_path_factory):
    return reference(tmp_path_factory, EVEN)


def assert_same_run(got, ref):
    losses, eval_loss, params, _, grads = got
    np.testing.assert_allclose(losses, ref[0], rtol=1e-5, atol=0)
    np.testing.assert_allclose(eval_loss, ref[1], rtol=1e-5, atol=0)
    # Every gradient of the first step, before Adam rescales anything: the sharded computation
    # itself. The key bias's is zero up to rounding on both sides.
    for g in (grads, ref[4]):
        qkv_bias = g["h_0"]["attn"]["qkv"]["bias"]
        assert np.max(np.abs(qkv_bias[1])) <= 1e-6 * np.max(np.abs(qkv_bias))
    flat_g = jax.tree_util.tree_leaves_with_path(grads)
    flat_g_ref = jax.tree_util.tree_leaves_with_path(ref[4])
    for (k, a), (_, b) in zip(flat_g, flat_g_ref, strict=True):
        if jax.tree_util.keystr(k).endswith("['qkv']['bias']"):
            a, b = np.delete(a, 1, axis=0), np.delete(b, 1, axis=0)
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b)), "grad" + jax.tree_util.keystr(k)
    flat = jax.tree_util.tree_leaves_with_path(without_query_key_bias(params))
    flat_ref = jax.tree_util.tree_leaves_with_path(without_query_key_bias(ref[2]))
    assert [k for k, _ in flat] == [k for k, _ in flat_ref]
    for (k, a), (_, b) in zip(flat, flat_ref):
        a, b = np.asarray(a), np.asarray(b)
        assert np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b)), jax.tree_util.keystr(k)


@pytest.mark.slow
@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_sharded_training_equals_single_device(tmp_path, single_odd, mesh_shape):
    """Losses, eval loss and trained params of every mesh equal the one-device run.

    (2, 2, 2) puts 5 heads and 97 vocabulary rows on a tensor axis of 2: uneven shards must work
    (or be replicated), as they must for GPT-2's own 50257-token vocabulary.
    """
    assert_same_run(run(tmp_path, mesh_shape), single_odd)


@pytest.fixture(scope="module")
def even_2x2x2(tmp_path_factory):
    return run(tmp_path_factory.mktemp("even222"), (2, 2, 2), EVEN)


@pytest.mark.slow
def test_tensor_parallel_training_equals_single_device(single_even, even_2x2x2):
    assert_same_run(even_2x2x2, single_even)


def test_trainer_devices_subset_builds_one_device_mesh(tmp_path):
    tr = train.Trainer(
        experiment((1, 1, 1)), str(tmp_path), data=synthetic_data(), devices=jax.devices()[:1]
    )
    assert dict(tr.mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    assert list(tr.mesh.devices.flat) == [jax.devices()[0]]


def _spec(sh):
    """A NamedSharding's spec with trailing Nones dropped (P('a', None) == P('a'))."""
    parts = list(sh.spec)
    while parts and parts[-1] is None:
        parts.pop()
    return tuple(parts)


@pytest.mark.slow
def test_parameter_shardings_follow_rules(even_2x2x2):
    tr = even_2x2x2[3]
    sh = tr.state_shardings.params
    assert _spec(sh["wte"]["embedding"]) == ("tensor", "fsdp")
    assert _spec(sh["wpe"]["embedding"]) == (None, "fsdp")
    b = sh["h_0"]
    assert _spec(b["mlp"]["wi"]["kernel"]) == ("fsdp", "tensor")
    assert _spec(b["mlp"]["wi"]["bias"]) == ("tensor",)
    assert _spec(b["mlp"]["wo"]["kernel"]) == ("tensor", "fsdp")
    assert _spec(b["mlp"]["wo"]["bias"]) == ("fsdp",)
    assert _spec(b["attn"]["qkv"]["kernel"]) == ("fsdp", None, "tensor")
    assert _spec(b["attn"]["out"]["kernel"]) == ("tensor", None, "fsdp")
    assert _spec(b["ln_1"]["scale"]) == ()
    # Optimizer moments are sharded like their parameters (ZeRO): find adam's mu for wi.
    mu = [
        s
        for s in jax.tree.leaves(tr.state_shardings.opt_state)
        if isinstance(s, jax.sharding.NamedSharding) and _spec(s) == ("fsdp", "tensor")
    ]
    assert len(mu) >= 2  # mu and nu of wi

    # The initialised arrays really carry these shardings; an fsdp x tensor kernel is split 4 ways.
    state = tr.init_state()
    wi = state.params["h_0"]["mlp"]["wi"]["kernel"]
    assert _spec(wi.sharding) == ("fsdp", "tensor")
    assert wi.shape == (60, 240)
    assert {s.data.shape for s in wi.addressable_shards} == {(30, 120)}
    assert _spec(state.params["wte"]["embedding"].sharding) == ("tensor", "fsdp")


def test_batch_sharding_is_over_data_and_fsdp():
    mesh = sharding.make_mesh((2, 2, 2))
    s = sharding.batch_sharding(mesh, 3, leading=1)
    assert s.spec == P(None, ("data", "fsdp"), None)
    x = np.arange(2 * 8 * 3).reshape(2, 8, 3)
    g = sharding.host_to_global(x, mesh, leading=1)
    np.testing.assert_array_equal(np.asarray(g), x)
    assert {sh.data.shape for sh in g.addressable_shards} == {(2, 2, 3)}


@pytest.mark.parametrize(
    "shape,expected", [((-1, 1, 1), (8, 1, 1)), ((2, -1, 2), (2, 2, 2)), ((1, 8, 1), (1, 8, 1))]
)
def test_mesh_shape_resolution(shape, expected):
    mesh = sharding.make_mesh(shape)
    assert tuple(mesh.shape.values()) == expected
    assert mesh.axis_names == ("data", "fsdp", "tensor")


@pytest.mark.parametrize(
    "shape,words",
    [
        ((3, 1, 1), ["(3, 1, 1)", "8"]),
        ((-1, -1, 1), ["at most one -1"]),
        ((3, -1, 1), ["does not divide", "8"]),
        ((2, 2), ["3 entries"]),
        ((0, 8, 1), ["positive"]),
    ],
)
def test_mesh_shape_errors(shape, words):
    with pytest.raises(ValueError) as e:
        sharding.make_mesh(shape)
    for w in words:
        assert w in str(e.value)


def test_batch_not_divisible_by_data_shards(tmp_path):
    with pytest.raises(ValueError, match=r"batch_size=6 .*4 data-parallel shards"):
        train.Trainer(
            experiment((4, 1, 2), batch_size=6), str(tmp_path), data=synthetic_data(batch=6)
        )
    with pytest.raises(ValueError, match="batch_size=12"):
        train.Trainer(
            experiment((1, 8, 1), batch_size=12), str(tmp_path), data=synthetic_data(batch=12)
        )
    # grad_accum splits the batch: 8 / 2 = 4 rows per microbatch cannot cover 8 shards.
    with pytest.raises(ValueError, match="grad_accum=2"):
        train.Trainer(
            experiment((8, 1, 1), batch_size=8, optim=OptimConfig(grad_accum=2)),
            str(tmp_path),
            data=synthetic_data(accum=2),
        )


# ------------------------------------------------------- no silent replication, no remat

REMAT = "Involuntary full rematerialization"
TINY = dict(n_positions=37, n_embd=60, n_layer=1, n_head=6)


def xla_warnings(cases) -> dict[str, str]:
    """{case: XLA's log while compiling its train step} from tests/xla_warnings.py, run in a
    fresh process (see there why); the control case must show the warning, so that a silent log
    cannot pass for a clean compile."""
    script = os.path.join(os.path.dirname(__file__), "xla_warnings.py")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "TF_CPP_MIN_LOG_LEVEL")}
    # The subprocess imports the jaxformers this process imports.
    root = os.path.dirname(os.path.dirname(os.path.abspath(jaxformers.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    out = subprocess.run(
        [sys.executable, script, json.dumps(cases)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    logs, current = {}, []
    for line in out.stderr.splitlines():
        if line.startswith("=== end of case "):
            logs[line.removeprefix("=== end of case ")] = "\n".join(current)
            current = []
        else:
            current.append(line)
    assert REMAT in logs.pop("control"), "the control compile no longer shows XLA's warning"
    assert len(logs) == len(cases)
    return logs


def assert_no_remat(logs: dict[str, str]) -> None:
    bad = {case: log[log.index(REMAT) :][:400] for case, log in logs.items() if REMAT in log}
    assert not bad, f"XLA replicates and reshards (involuntary full rematerialization): {bad}"


def test_gpt2_train_step_on_2x2x2_compiles_without_rematerialization():
    """The sharding notebook's case: GPT-2 on (data, fsdp, tensor) = (2, 2, 2), with the
    vocabulary padded so that tensor divides it. It warned in the backward pass of the token
    embedding's lookup until models/layers.Embed gathered the table over fsdp first."""
    cases = [["gpt2", dict(TINY, vocab_size=509, vocab_pad_multiple=128), [2, 2, 2]]]
    assert_no_remat(xla_warnings(cases))


@pytest.mark.slow
def test_no_rematerialization_on_any_tested_mesh():
    """Every family on the meshes the tests train on, odd and padded vocabularies, 5 heads."""
    gpt2_odd = dict(TINY, vocab_size=97, n_head=5)
    bert = dict(
        vocab_size=509,
        hidden_size=60,
        num_hidden_layers=1,
        num_attention_heads=6,
        intermediate_size=96,
        max_position_embeddings=37,
        vocab_pad_multiple=128,
    )
    t5 = dict(
        vocab_size=509,
        d_model=60,
        d_kv=10,
        num_heads=6,
        d_ff=96,
        num_layers=1,
        num_decoder_layers=1,
        vocab_pad_multiple=128,
    )
    meshes = [[8, 1, 1], [2, 4, 1], [2, 2, 2], [1, 2, 4]]
    cases = [["gpt2", gpt2_odd, m] for m in meshes]
    cases += [[f, kw, m] for f, kw in (("bert", bert), ("t5", t5)) for m in meshes]
    assert_no_remat(xla_warnings(cases))


def test_gpt2_vocabulary_padded_is_sharded_not_replicated():
    """50257 tokens do not divide a tensor axis of 2: the embedding was replicated on every
    device, silently. Now that warns and names the fix; padded to 50304 (vocab_pad_multiple=128)
    the rows split over tensor (and the width over fsdp)."""
    mesh = sharding.make_mesh((2, 2, 2))

    def embedding_sharding(**kw):
        model = GPT2LMHeadModel(GPT2Config(n_positions=16, n_embd=64, n_layer=1, n_head=2, **kw))
        s = train.create_train_state(
            model, (np.zeros((1, 4), np.int32),), optax.adamw(1e-3), mesh, CausalLM()
        )
        return s.shardings.params["wte"]["embedding"], s.shardings

    with warnings.catch_warnings():
        warnings.simplefilter("error", sharding.ReplicationWarning)
        sh, all_sh = embedding_sharding(vocab_size=50257, vocab_pad_multiple=128)
    assert sh.spec == P("tensor", "fsdp")
    assert sh.shard_shape((50304, 64)) == (25152, 32)
    mu = all_sh.opt_state[0].mu["wte"]["embedding"]  # Adam's moments alike
    assert mu.shard_shape((50304, 64)) == (25152, 32)

    with pytest.warns(sharding.ReplicationWarning, match=r"\['wte'\]\['embedding'\].*50257") as w:
        sh, _ = embedding_sharding(vocab_size=50257)
    assert "vocab_pad_multiple" in str(w[0].message)
    assert sh.shard_shape((50257, 64)) == (50257, 32)  # whole on every device: replicated
