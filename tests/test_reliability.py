"""Reliability: multi-host equivalence, restore onto other meshes, preemption, kill -9 resume,
damaged checkpoints, unwritable workdirs, non-finite losses and the workdir lock.

The subprocess runs use the tiny variants on a ~40 KB slice of one play (conftest's ``corpus``:
fast data preparation) and share the session's XLA compilation cache through
JAX_COMPILATION_CACHE_DIR. The fuzz tests of the inputs live beside their modules' tests
(test_span_corruption, test_mlm_nsp, test_data, test_wordpiece).
"""

import dataclasses
import glob
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import ROOT, assert_close

from jaxformers import cli, sharding, train
from jaxformers.config import CheckpointConfig, MeshConfig

EXPS = {n: os.path.join(ROOT, "experiments", f"{n}_shakespeare.py") for n in ("gpt2", "bert", "t5")}


# ---------------------------------------------------------------------------------- helpers


def sub_env(data_dir, ndev=8):
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        JAXFORMERS_DATA_DIR=data_dir,
        TF_CPP_MIN_LOG_LEVEL="2",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={ndev}",
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    if "JAXFORMERS_TEST_COMPILE_CACHE" in os.environ:
        env["JAX_COMPILATION_CACHE_DIR"] = os.environ["JAXFORMERS_TEST_COMPILE_CACHE"]
    return env


def train_cmd(name, workdir, corpus, *sets, extra=()):
    cmd = [
        sys.executable,
        "-m",
        "jaxformers",
        "train",
        EXPS[name],
        "--variant",
        "tiny",
        "--workdir",
        str(workdir),
        "--set",
        "progress=false",
        "--set",
        f"data.corpus={corpus}",
    ]
    for s in sets:
        cmd += ["--set", s]
    return cmd + list(extra)


def run_ok(cmd, env, timeout=240):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p.stdout + p.stderr


def records(workdir, split="train"):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        recs = []
        for line in f:
            try:
                recs.append(json.loads(line))
            except json.JSONDecodeError:  # a line being written
                pass
    return [r for r in recs if r["split"] == split]


def losses(workdir):
    """step -> loss; a step logged twice (before a kill and after the resume) keeps the last."""
    return {r["step"]: r["loss"] for r in records(workdir)}


def wait_for(pred, proc, timeout=180):
    t = time.time()
    while not pred():
        assert proc.poll() is None, f"exited early: {proc.returncode}\n{proc.stdout.read()[-3000:]}"
        assert time.time() - t < timeout, "timed out"
        time.sleep(0.05)


def tiny(corpus, **kw):
    spec = importlib.util.spec_from_file_location("gpt2_shakespeare_rel", EXPS["gpt2"])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    exp = mod.get_config("tiny")
    return dataclasses.replace(
        exp,
        data=dataclasses.replace(exp.data, corpus=corpus),
        progress=False,
        peak_tflops=1.0,
        **kw,
    )


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------- 1. multi-host


def _two_procs(workdir, corpus, data_dir, port, *sets, name="gpt2"):
    return [
        subprocess.Popen(
            train_cmd(
                name,
                workdir,
                corpus,
                *sets,
                extra=(
                    "--coordinator",
                    f"127.0.0.1:{port}",
                    "--num-processes",
                    "2",
                    "--process-id",
                    str(i),
                ),
            ),
            env={k: v for k, v in sub_env(data_dir, 4).items() if k != "JAX_COMPILATION_CACHE_DIR"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
        )
        for i in range(2)
    ]


def _finish(procs, timeout=240):
    try:
        outs = [p.communicate(timeout=timeout)[0] for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        outs = [p.communicate()[0] for p in procs]
        pytest.fail("2-process run hung:\n" + "\n----\n".join(o[-1500:] for o in outs))
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    return outs


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, corpus, data_dir):
    one = tmp_path / "one"
    run_ok(
        train_cmd("gpt2", one, corpus, "steps=5"), sub_env(data_dir, 8)
    )  # also prepares the corpus
    two = tmp_path / "two"
    outs = _finish(_two_procs(two, corpus, data_dir, free_port(), "steps=5"), timeout=150)
    assert "mesh {'data': 8" in outs[0]
    a, b = losses(one), losses(two)
    assert sorted(a) == [1, 2, 3, 4, 5]
    assert_close(b, a, rel=1e-5)
    assert [r["step"] for r in records(two)] == [1, 2, 3, 4, 5]  # only process 0 writes metrics


@pytest.mark.slow
@pytest.mark.parametrize("name", ["bert", "t5"])
def test_two_processes_match_one_host_with_two_stream_shards(tmp_path, corpus, data_dir, name):
    """BERT and T5 stream their examples, dealt to data shards (one per host by default): two
    processes x 4 devices train on the batches of one process x 8 devices that draws both shards
    (data.stream_shards=2), so their losses agree."""
    docs = tmp_path / "docs"  # streaming deals documents to shards: many small ones
    docs.mkdir()
    with open(corpus, encoding="utf-8") as f:
        text = f.read()
    for i in range(0, len(text), 2000):
        (docs / f"d{i:06d}.txt").write_text(text[i : i + 2000], encoding="utf-8")
    one, two = tmp_path / "one", tmp_path / "two"
    run_ok(train_cmd(name, one, str(docs), "steps=3", "data.stream_shards=2"), sub_env(data_dir, 8))
    # the same tokenizer (WordPiece training is not deterministic: huggingface/tokenizers#1794)
    shutil.copytree(one / "tokenizer", two / "tokenizer")
    outs = _finish(_two_procs(two, str(docs), data_dir, free_port(), "steps=3", name=name))
    assert "mesh {'data': 8" in outs[0]
    a, b = losses(one), losses(two)
    assert sorted(a) == [1, 2, 3] and len(set(a.values())) == 3
    assert_close(b, a, rel=1e-5)


# ---------------------------------------------------------------------------------- 2. other meshes


@pytest.mark.slow
def test_restore_onto_other_meshes(tmp_path, corpus):
    exp = tiny(
        corpus,
        steps=6,
        mesh=MeshConfig((8, 1, 1)),
        optim=dataclasses.replace(tiny(corpus).optim, warmup_steps=2),
    )
    full = train.Trainer(exp, str(tmp_path / "full")).run()
    assert sorted(full.train_losses) == [1, 2, 3, 4, 5, 6]
    wa, wb = str(tmp_path / "a"), str(tmp_path / "b")
    first = train.Trainer(exp, wa).run(stop_at=3)
    assert first.final_step == 3
    for s in (1, 2, 3):
        assert first.train_losses[s] == full.train_losses[s]
    shutil.copytree(wa, wb)
    r222 = train.Trainer(dataclasses.replace(exp, mesh=MeshConfig((2, 2, 2))), wa).run()
    r111 = train.Trainer(
        dataclasses.replace(exp, mesh=MeshConfig((1, 1, 1))), wb, devices=jax.devices()[:1]
    ).run()
    want = {s: full.train_losses[s] for s in (4, 5, 6)}
    for r in (r222, r111):
        assert r.steps_run == 3 and r.final_step == 6
        assert_close(r.train_losses, want, rel=1e-5)
    assert len(set(want.values())) == 3


# ---------------------------------------------------------------------------------- 3. preemption


@pytest.mark.slow
def test_sigterm_saves_and_resumes(tmp_path, corpus, data_dir):
    wd = tmp_path / "wd"
    env = sub_env(data_dir)
    p = subprocess.Popen(
        train_cmd("gpt2", wd, corpus, "steps=400", "checkpoint.every=1000"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        wait_for(lambda: len(records(wd)) >= 3, p)
        p.send_signal(signal.SIGTERM)
        out = p.communicate(timeout=120)[0]
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, out[-3000:]
    m = re.search(r"preempted \(SIGTERM\): saved a checkpoint at step (\d+)", out)
    assert m, out[-3000:]
    step = int(m.group(1))
    assert 3 <= step < 400
    assert os.path.isdir(wd / "checkpoints" / str(step))
    out2 = run_ok(train_cmd("gpt2", wd, corpus, f"steps={step + 2}", "checkpoint.every=1000"), env)
    assert f"resuming from step {step}" in out2
    assert f"done: step {step + 2}" in out2


@pytest.mark.slow
def test_sigterm_on_one_process_stops_all_at_one_step(tmp_path, corpus, data_dir):
    """SIGTERM to process 1 only: both processes stop after the same step, save it once, exit 0;
    running again ends with the losses of an uninterrupted 2-process run, bit for bit."""
    sets = ("steps=40", "checkpoint.every=1000", "log_every=2")
    run_ok(train_cmd("gpt2", tmp_path / "prep", corpus, "steps=1"), sub_env(data_dir, 8))
    full = tmp_path / "full"
    _finish(_two_procs(full, corpus, data_dir, free_port(), *sets))
    want = losses(full)
    assert sorted(want) == list(range(2, 41, 2))

    wd = tmp_path / "wd"
    procs = _two_procs(wd, corpus, data_dir, free_port(), *sets)
    try:
        wait_for(lambda: len(records(wd)) >= 2, procs[1])  # training has begun (step 4 logged)
        procs[1].send_signal(signal.SIGTERM)
        outs = _finish(procs, timeout=120)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    pat = r"preempted \(SIGTERM\): saved a checkpoint at step (\d+)"
    stops = [re.findall(pat, out) for out in outs]
    assert all(len(s) == 1 for s in stops), [o[-2000:] for o in outs]
    step = int(stops[0][0])
    assert int(stops[1][0]) == step and 4 <= step < 40 and step % 2 == 0
    assert _steps(wd) == [step]  # saved once, at that step

    outs = _finish(_two_procs(wd, corpus, data_dir, free_port(), *sets))
    assert f"resuming from step {step}" in outs[0]
    assert "done: step 40" in outs[0]
    assert losses(wd) == want  # bit for bit


# ---------------------------------------------------------------------------------- 4. kill -9


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "bert", "t5"])
def test_exact_resume_after_sigkill(tmp_path, corpus, data_dir, name):
    env = sub_env(data_dir)
    sets = ("steps=8", "log_every=1", "checkpoint.every=2")
    a, b = tmp_path / "a", tmp_path / "b"
    run_ok(train_cmd(name, a, corpus, *sets), env)
    want = losses(a)
    assert sorted(want) == list(range(1, 9))
    # B reuses A's tokenizer and token caches (the prepared examples live in the shared data_dir).
    b.mkdir()
    for d in ("tokenizer", "data"):
        if (a / d).is_dir():
            shutil.copytree(a / d, b / d)
    p = subprocess.Popen(
        train_cmd(name, b, corpus, *sets),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:
        wait_for(lambda: any(r["step"] >= 3 for r in records(b)), p)
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == -signal.SIGKILL
    killed_at = max(r["step"] for r in records(b))
    out = run_ok(train_cmd(name, b, corpus, *sets), env)
    m = re.search(r"resuming from step (\d+)", out)
    resumed = int(m.group(1)) if m else 0
    assert resumed <= killed_at and resumed < 8, (resumed, killed_at)
    got = losses(b)
    assert sorted(got) == list(range(1, 9))
    for s in range(resumed + 1, 9):
        assert got[s] == want[s], (name, s, got[s], want[s])  # bit for bit


# -------------------------------------------------------------------------- 5. damaged / unwritable


@pytest.mark.slow
def test_damaged_checkpoint_falls_back(tmp_path, corpus, caplog):
    wd = str(tmp_path / "wd")
    exp = tiny(corpus, steps=3, checkpoint=CheckpointConfig(every=1, keep=3))
    train.Trainer(exp, wd).run()
    assert sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")) if s.isdigit()) == [
        1,
        2,
        3,
    ]
    files = [
        f
        for f in glob.glob(os.path.join(wd, "checkpoints", "3", "state", "**"), recursive=True)
        if os.path.isfile(f)
    ]
    biggest = max(files, key=os.path.getsize)
    size = os.path.getsize(biggest)
    with open(biggest, "r+b") as f:
        f.truncate(size // 2)
    caplog.set_level("WARNING", logger="jaxformers")
    r = train.Trainer(dataclasses.replace(exp, steps=5), wd).run()
    assert "checkpoint at step 3 is damaged" in caplog.text
    assert r.final_step == 5 and r.steps_run == 3 and sorted(r.train_losses) == [3, 4, 5]


def test_unwritable_workdir(tmp_path, corpus, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    bad = str(blocker / "wd")
    with pytest.raises(RuntimeError, match="not writable"):
        train.Trainer(tiny(corpus), bad)
    rc = cli.main(
        [
            "train",
            EXPS["gpt2"],
            "--variant",
            "tiny",
            "--workdir",
            bad,
            "--set",
            f"data.corpus={corpus}",
        ]
    )
    assert rc == 2
    assert "not writable" in capsys.readouterr().err
    assert not os.path.exists(bad)


# ---------------------------------------------------------------------------------- 6. numerics


@pytest.mark.slow
def test_nan_stop_names_step_and_checkpoint(tmp_path, corpus):
    wd = str(tmp_path)
    exp = tiny(corpus, steps=6, checkpoint=CheckpointConfig(every=1, keep=3))
    exp = dataclasses.replace(
        exp, optim=dataclasses.replace(exp.optim, lr=1e30, clip_norm=0.0, warmup_steps=1)
    )
    with pytest.raises(FloatingPointError) as e:
        train.Trainer(exp, wd).run()
    msg = str(e.value)
    m = re.search(
        r"loss is (nan|inf|-inf) at step (\d+); the last good checkpoint: step (\d+)", msg
    )
    assert m, msg
    bad, good = int(m.group(2)), int(m.group(3))
    assert good == bad - 1 and os.path.isdir(os.path.join(wd, "checkpoints", str(good)))
    assert not os.path.exists(
        os.path.join(wd, "checkpoints", str(bad))
    )  # never saves a non-finite state


class _PoisonedData:
    """The real data, but the batches of ``bad`` steps hold out-of-range ids (NaN embeddings)."""

    def __init__(self, inner, bad):
        self.inner, self.bad = inner, bad

    def __getattr__(self, k):
        return getattr(self.inner, k)

    def train_batch(self, step):
        b = self.inner.train_batch(step)
        if step in self.bad:
            b = dict(b, inputs=np.full_like(b["inputs"], 10**6))
        return b


@pytest.mark.slow
def test_nan_skip_keeps_params_finite(tmp_path, corpus):
    wd = str(tmp_path)
    exp = tiny(corpus, steps=5, nan_policy="skip", checkpoint=CheckpointConfig(every=1, keep=3))
    tr = train.Trainer(exp, wd)
    tr.data = _PoisonedData(tr.data, bad={1, 3})  # steps 2 and 4
    r = tr.run()
    assert r.final_step == 5
    recs = {x["step"]: x for x in records(wd)}
    assert [recs[s]["skipped"] for s in range(1, 6)] == [0.0, 1.0, 0.0, 1.0, 0.0]
    assert not math.isfinite(recs[2]["loss"]) and math.isfinite(recs[5]["loss"])
    from jaxformers import checkpoint

    params = checkpoint.load_params(os.path.join(wd, "params"))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_bf16_loss_is_float32(tmp_path):
    # The small synthetic-data experiment on one device: no tokenizer training or corpus
    # preparation, which the dtype of the loss does not depend on.
    from test_train import small_experiment, synthetic_data

    exp = small_experiment()
    exp = dataclasses.replace(exp, model=dataclasses.replace(exp.model, dtype="bfloat16"))
    tr = train.Trainer(exp, str(tmp_path), data=synthetic_data(), devices=jax.devices()[:1])
    state = tr.init_state()
    step_fn, _ = tr.compiled_steps()
    with tr.mesh_context():
        _, m = step_fn(
            state,
            sharding.host_to_global(tr.data.train_batch(0), tr.mesh, leading=1),
            jax.random.PRNGKey(1),
        )
    assert m["loss"].dtype == jnp.float32 and math.isfinite(float(m["loss"]))


# ---------------------------------------------------------------------------------- 7. the lock


def test_workdir_in_use(tmp_path, corpus):
    wd = tmp_path / "wd"
    wd.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl,sys,time; f=open(sys.argv[1],'w'); fcntl.flock(f, fcntl.LOCK_EX); "
            "print('locked', flush=True); time.sleep(120)",
            str(wd / ".lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        # Refused before the data is built: no tokenizer or token file of the run in progress
        # is written over.
        with pytest.raises(RuntimeError, match="in use"):
            train.Trainer(tiny(corpus), str(wd))
        assert os.listdir(wd) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    assert not os.path.exists(wd / "checkpoints")


# ---------------------------------------------------------------------- 8. a changed configuration


def _small(**kw):
    from test_train import small_experiment

    kw.setdefault("checkpoint", CheckpointConfig(every=1, keep=3, async_save=False))
    return small_experiment(steps=2, **kw)


def _small_run(exp, wd, restart=False):
    from test_train import synthetic_data

    accum = exp.optim.grad_accum
    data = synthetic_data(accum=accum)
    return train.Trainer(exp, wd, data=data, devices=jax.devices()[:1], restart=restart).run()


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """The workdir of one finished ``_small()`` run (2 steps, a checkpoint at each), trained once
    per module; ``_copy_of`` gives each test its own copy to change."""
    wd = str(tmp_path_factory.mktemp("small_run"))
    _small_run(_small(), wd)
    return wd


def _copy_of(small_run, tmp_path):
    wd = str(tmp_path / "wd")
    shutil.copytree(small_run, wd, ignore=shutil.ignore_patterns(".lock*"))
    return wd


def _files(wd):
    """relative path -> (size, mtime) of every file a run left (the lock aside)."""
    out = {}
    for root, _, names in os.walk(wd):
        for n in names:
            if not n.startswith(".lock"):
                p = os.path.join(root, n)
                out[os.path.relpath(p, wd)] = (os.path.getsize(p), os.stat(p).st_mtime_ns)
    return out


def _steps(wd):
    return sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")) if s.isdigit())


def _wider(exp):
    return dataclasses.replace(exp, model=dataclasses.replace(exp.model, n_embd=65))


def test_changed_model_refuses_and_touches_nothing(small_run, tmp_path):
    """A changed model refuses, names the field and moves or writes nothing."""
    from jaxformers import checkpoint

    wd = _copy_of(small_run, tmp_path)
    exp = _small()
    before = _files(wd)
    assert "model.json" in before and any(p.startswith("params") for p in before)
    with pytest.raises(checkpoint.CheckpointMismatch) as e:
        _small_run(_wider(exp), wd)
    msg = str(e.value)
    assert "model.n_embd: 60 in the checkpoint, 65 now" in msg
    assert "differs in 1 setting" in msg and "--restart" in msg and "init_from" in msg
    assert _files(wd) == before  # nothing moved, nothing written
    assert not os.path.exists(os.path.join(wd, "checkpoints_damaged"))


@pytest.mark.slow  # two runs; the refusal above is the fast test of this feature
def test_restart_moves_the_old_run_aside(small_run, tmp_path, capsys):
    from jaxformers import inference

    wd = _copy_of(small_run, tmp_path)
    exp = _small()
    before = _files(wd)
    capsys.readouterr()
    r = _small_run(_wider(exp), wd, restart=True)
    assert r.steps_run == 2 and r.final_step == 2  # from step 0
    (aside,) = glob.glob(os.path.join(wd, "previous-*"))
    assert f"moved the previous run to {aside}" in capsys.readouterr().out
    for rel in ("model.json", "metrics.jsonl", "checkpoints/1", "checkpoints/2", "params"):
        assert os.path.exists(os.path.join(aside, rel)), rel
    assert _files(aside) == before
    assert inference.read_model_json(wd).n_embd == 65
    assert inference.read_model_json(aside).n_embd == 60
    assert [r["step"] for r in records(wd)] == [1, 2]  # a new metrics file


@pytest.mark.slow  # resuming itself is in the fast loop (test_train); this adds what may change
def test_longer_run_and_other_reporting_resume(small_run, tmp_path, capsys):
    wd = _copy_of(small_run, tmp_path)
    exp = _small()
    longer = dataclasses.replace(
        exp,
        steps=4,
        eval_every=3,
        log_every=2,
        nan_policy="skip",
        checkpoint=CheckpointConfig(every=2, keep=2, async_save=False),
        optim=dataclasses.replace(exp.optim, grad_accum=2),  # the same examples per step
    )
    r = _small_run(longer, wd)
    assert r.steps_run == 2 and r.final_step == 4
    out = capsys.readouterr().out
    assert "the run's length changed (steps 2 -> 4); resuming from step 2" in out
    assert _steps(wd) == [3, 4] or _steps(wd) == [2, 4]
    # A shorter steps than the checkpoint trains nothing and says so.
    r = _small_run(dataclasses.replace(longer, steps=3), wd)
    assert r.final_step == 4 and r.steps_run == 0
    assert "checkpoint is at step 4, past steps=3: nothing to train" in capsys.readouterr().out


def test_finished_run_evaluates_again_only_when_eval_batches_changed(small_run, tmp_path, capsys):
    """Run again as it was, a finished run does nothing; with another eval_batches it evaluates
    its final state again (no training) and records what the new evaluation covered."""
    wd = _copy_of(small_run, tmp_path)
    exp = _small()
    assert [r["eval_batches"] for r in records(wd, train.EVAL_SCOPE)] == [exp.eval_batches]
    r = _small_run(exp, wd)
    assert r.steps_run == 0 and r.final_step == 2
    assert "nothing to do" in capsys.readouterr().out
    assert len(records(wd, "eval")) == 1
    r = _small_run(dataclasses.replace(exp, eval_batches=2), wd)
    assert r.steps_run == 0 and r.final_step == 2
    assert "evaluating it again: eval_batches 1 -> 2" in capsys.readouterr().out
    evals = records(wd, "eval")
    assert [e["step"] for e in evals] == [2, 2] and evals[1]["loss"] != evals[0]["loss"]
    assert {k: v for k, v in evals[1].items() if k not in ("step", "split")} == r.eval_metrics
    assert [s["eval_batches"] for s in records(wd, train.EVAL_SCOPE)] == [1, 2]
    assert _small_run(dataclasses.replace(exp, eval_batches=2), wd).eval_metrics == r.eval_metrics
    assert "nothing to do" in capsys.readouterr().out


def test_run_that_lost_its_lock_writes_nothing_more(tmp_path, monkeypatch):
    """When another run takes the workdir's lock over (a remote lock object, after this run
    stopped refreshing it: test_gcs covers the object itself), the loop stops before its next
    checkpoint and its export: step 1's checkpoint is written, step 2's and the params are not."""
    from jaxformers import storage

    checks = []

    def check(self):
        checks.append(len(checks))
        if len(checks) > 1:
            raise storage.LockLost("another run took over the lock")

    monkeypatch.setattr(train.WorkdirLock, "check", check)
    wd = str(tmp_path / "wd")
    with pytest.raises(storage.LockLost, match="took over"):
        _small_run(_small(), wd)
    assert _steps(wd) == [1] and len(checks) == 2
    assert not os.path.exists(os.path.join(wd, "params"))


def test_damaged_checkpoint_set_aside_fast(small_run, tmp_path, caplog):
    wd = _copy_of(small_run, tmp_path)
    exp = _small()
    with open(os.path.join(wd, "checkpoints", "2", "state", "manifest.ocdbt"), "r+b") as f:
        f.seek(10)
        f.write(b"\xff" * 40)  # garbled
    caplog.set_level("WARNING", logger="jaxformers")
    r = _small_run(dataclasses.replace(exp, steps=3), wd)
    assert "checkpoint at step 2 is damaged" in caplog.text
    assert r.steps_run == 2 and r.final_step == 3  # from step 1
    assert len(os.listdir(os.path.join(wd, "checkpoints_damaged"))) == 1


def test_garbled_array_data_is_damage_not_other_numbers(tmp_path, caplog):
    """Bytes garbled inside a checkpoint's compressed array data: orbax reads other numbers back
    without an error, so the checksums saved in its meta catch it; the checkpoint is set aside and
    the previous one restored, with the saved values."""
    from jaxformers import checkpoint

    def make(s):  # step 2's is the state whose garbled data orbax read back without an error
        w = np.random.default_rng(2 - s).normal(size=(256, 256))
        return {"w": jnp.asarray(w, jnp.float32), "b": jnp.arange(1000, dtype=jnp.float32) * s}

    states = {s: make(s) for s in (1, 2)}
    d = str(tmp_path / "ck")
    ck = checkpoint.Checkpointer(d, keep=3, async_save=False)
    try:
        for s, state in states.items():
            ck.save(s, state, {"step": s})
        ck.wait()
        assert ck.read_meta(2) == {"step": 2}  # the checksums stay out of the record
        data = [f for f in glob.glob(f"{d}/2/state/**/d/*", recursive=True) if os.path.isfile(f)]
        big = max(data, key=os.path.getsize)
        assert os.path.getsize(big) > 100_000  # the 256 x 256 array's chunk
        with open(big, "r+b") as f:
            f.seek(os.path.getsize(big) // 2)
            f.write(b"\x13" * 64)
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = checkpoint.abstract_like(states[1], jax.tree.map(lambda _: one, states[1]))
        caplog.set_level("WARNING", logger="jaxformers")
        step, state, meta = ck.restore_latest_good(target)
        assert step == 1 and meta == {"step": 1}
        jax.tree.map(np.testing.assert_array_equal, state, states[1])
        assert "step 2 is damaged" in caplog.text and "checksums differ" in caplog.text
        assert ck.all_steps() == [1] and len(os.listdir(d + "_damaged")) == 1
    finally:
        ck.close()
    # Exported params (what inference loads) the same way: an error, not other numbers.
    out = checkpoint.export_params(states[2], str(tmp_path / "params"))
    jax.tree.map(np.testing.assert_array_equal, checkpoint.load_params(out), states[2])
    big = max(glob.glob(f"{out}/**/d/*", recursive=True), key=os.path.getsize)
    with open(big, "r+b") as f:
        f.seek(os.path.getsize(big) // 2)
        f.write(b"\x13" * 64)
    with pytest.raises(ValueError, match="checksums differ"):
        checkpoint.load_params(out)


def test_checkpoint_of_other_shapes_is_not_damage(tmp_path):
    """Without a recorded configuration (older checkpoints) a checkpoint that does not fit the
    restore target is still a changed configuration: an error, nothing set aside."""
    from jaxformers import checkpoint

    ck = checkpoint.Checkpointer(str(tmp_path / "ck"), async_save=False)
    try:
        ck.save(1, {"a": jnp.ones((5, 3)), "b": jnp.zeros((7,))}, {"step": 1})
        ck.wait()
        one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        for tree in (
            {"a": jnp.ones((6, 3)), "b": jnp.zeros((7,))},  # another shape
            {"a": jnp.ones((5, 3)), "b": jnp.zeros((7,)), "c": jnp.zeros(2)},  # another tree
            {"a": jnp.ones((5, 3)), "c": jnp.zeros((7,))},  # renamed, same shapes
        ):
            target = checkpoint.abstract_like(tree, jax.tree.map(lambda _: one, tree))
            with pytest.raises(checkpoint.CheckpointMismatch, match="step 1"):
                ck.restore_latest_good(target)
            assert ck.all_steps() == [1]
        assert not os.path.exists(str(tmp_path / "ck_damaged"))
    finally:
        ck.close()


def test_transient_read_errors_are_retried_never_set_aside(small_run, tmp_path, monkeypatch):
    import errno

    from jaxformers import checkpoint

    wd = _copy_of(small_run, tmp_path)
    exp = _small()
    monkeypatch.setattr(checkpoint, "RETRY_DELAYS", (0.0, 0.0, 0.0))
    real = checkpoint.Checkpointer.restore
    fails = {"left": 1}

    def flaky(self, step, abstract):
        if fails["left"]:
            fails["left"] -= 1
            raise OSError(errno.EIO, "Input/output error")
        return real(self, step, abstract)

    monkeypatch.setattr(checkpoint.Checkpointer, "restore", flaky)
    r = _small_run(dataclasses.replace(exp, steps=3), wd)
    assert fails["left"] == 0 and r.steps_run == 1 and r.final_step == 3  # retried, resumed at 2
    for err in (
        TimeoutError("timed out"),
        ValueError("UNAVAILABLE: GCS request failed (what TensorStore raises)"),
    ):
        before = _files(wd)

        def down(self, step, abstract, err=err):
            raise err

        monkeypatch.setattr(checkpoint.Checkpointer, "restore", down)
        with pytest.raises(checkpoint.CheckpointUnreachable) as e:
            _small_run(dataclasses.replace(exp, steps=5), wd)
        assert os.path.join(wd, "checkpoints", "3") in str(e.value) and "4 times" in str(e.value)
        assert _files(wd) == before and not os.path.exists(wd + "/checkpoints_damaged")


@pytest.mark.slow
def test_cli_changed_setting_exits_2_and_restart(tmp_path, corpus, capsys):
    wd = str(tmp_path / "wd")
    base = [
        "train",
        EXPS["gpt2"],
        "--variant",
        "tiny",
        "--workdir",
        wd,
        "--set",
        f"data.corpus={corpus}",
        "--set",
        "steps=1",
        "--set",
        "progress=false",
        "--set",
        "sample.max_new_tokens=0",
    ]
    assert cli.main(base) == 0
    capsys.readouterr()
    assert cli.main([*base, "--set", "model.n_embd=48"]) == 2
    err = capsys.readouterr().err
    assert "model.n_embd: 32 in the checkpoint, 48 now" in err and "--restart" in err
    assert cli.main([*base, "--set", "model.n_embd=48", "--restart"]) == 0
    assert "moved the previous run to" in capsys.readouterr().out
    assert glob.glob(os.path.join(wd, "previous-*", "checkpoints", "1"))


# ---------------------------------------------------------------------------------- 9. Ctrl-C


def _interrupted_run(exp, wd, at_step, times=1):
    """A run that gets ``times`` SIGINTs while it builds the batch of step ``at_step``."""
    from test_train import synthetic_data

    data = synthetic_data()
    batch = data.train_batch

    def train_batch(step):
        if step == at_step:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
        return batch(step)

    data.train_batch = train_batch
    return train.Trainer(exp, wd, data=data, devices=jax.devices()[:1]).run()


def test_ctrl_c_saves_resumes_and_second_ctrl_c_aborts(tmp_path, capsys):
    from test_train import small_experiment

    exp = small_experiment(steps=6, checkpoint=CheckpointConfig(every=1000, keep=3))
    handler = signal.getsignal(signal.SIGINT)
    want = _small_run(exp, str(tmp_path / "full")).train_losses
    wd = str(tmp_path / "wd")
    first = _interrupted_run(exp, wd, at_step=2)  # the flag is seen after step 3 (done = 3)
    out = capsys.readouterr()
    assert "stopping at the next step boundary; press Ctrl-C again to abort" in out.err
    assert "preempted (SIGINT): saved a checkpoint at step 3" in out.out
    assert first.preempted and first.final_step == 3 and _steps(wd) == [3]
    assert first.train_losses == {s: want[s] for s in (1, 2, 3)}
    second = _small_run(exp, wd)
    assert second.final_step == 6 and not second.preempted
    assert second.train_losses == {s: want[s] for s in (4, 5, 6)}  # bit for bit
    assert signal.getsignal(signal.SIGINT) is handler  # restored

    with pytest.raises(KeyboardInterrupt):
        _interrupted_run(exp, str(tmp_path / "abort"), at_step=1, times=2)
    assert not _steps(str(tmp_path / "abort"))
    assert signal.getsignal(signal.SIGINT) is handler
