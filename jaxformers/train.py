"""Training: the state, one pure train step, evaluation, and the loop around them.

``train_step(state, batch, rng) -> (state, metrics)`` is pure and module-level; ``Trainer`` jits it
once with explicit in/out shardings and buffer donation (what ``pjit`` became), builds the state
abstract-first on the mesh, restores or initialises it, and runs the loop: metrics to JSONL and
TensorBoard, a progress bar with loss, tokens/s, MFU and ETA, periodic eval and checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from jaxformers import checkpoint, inference, launch, models, perf, sharding, storage
from jaxformers.config import Experiment
from jaxformers.data import pipeline, streaming
from jaxformers.models import layers

log = logging.getLogger("jaxformers")


class TrainState(struct.PyTreeNode):
    step: jax.Array
    params: Any
    opt_state: Any
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    objective: Any = struct.field(pytree_node=False)
    schedule: Callable = struct.field(pytree_node=False)
    skip_nonfinite: bool = struct.field(pytree_node=False, default=False)

    def arrays(self) -> dict:
        """What a checkpoint holds."""
        return {"step": self.step, "params": self.params, "opt_state": self.opt_state}


# ---------------------------------------------------------------------------------- optimizer


def make_schedule(o, total_steps: int) -> Callable:
    """Linear warmup then the decay; "rsqrt" is T5's: constant lr for warmup, then
    lr*sqrt(warmup/step)."""
    warm = optax.linear_schedule(0.0, o.lr, max(o.warmup_steps, 1))
    if o.schedule == "rsqrt":
        warm = optax.constant_schedule(o.lr)
    rest = max(total_steps - o.warmup_steps, 1)
    if o.schedule == "cosine":
        decay = optax.cosine_decay_schedule(o.lr, rest, alpha=o.end_lr_ratio)
    elif o.schedule == "linear":
        decay = optax.linear_schedule(o.lr, o.lr * o.end_lr_ratio, rest)
    elif o.schedule == "constant":
        decay = optax.constant_schedule(o.lr)
    elif o.schedule == "rsqrt":  # s counts from the end of warmup
        decay = lambda s: o.lr * jnp.sqrt(max(o.warmup_steps, 1) / (s + max(o.warmup_steps, 1)))  # noqa: E731
    else:
        raise ValueError(
            f"unknown schedule {o.schedule!r}; choose cosine, linear, constant or rsqrt"
        )
    return optax.join_schedules([warm, decay], [o.warmup_steps])


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices only: not on norms, biases or other vectors (a norm's scale and
    bias are vectors; scanned layers stack them into matrices, hence the leaf-name rule)."""

    def is_decayed(path, x):
        return x.ndim >= 2 and getattr(path[-1], "key", None) not in ("bias", "scale")

    return jax.tree_util.tree_map_with_path(is_decayed, params)


def make_optimizer(o, schedule: Callable) -> optax.GradientTransformation:
    parts = []
    if o.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(o.clip_norm))
    if o.name == "adamw":
        parts.append(
            optax.adamw(
                schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask
            )
        )
    elif o.name == "adafactor":
        parts.append(
            optax.adafactor(
                schedule, weight_decay_rate=o.weight_decay or None, weight_decay_mask=decay_mask
            )
        )
    else:
        raise ValueError(f"unknown optimizer {o.name!r}; choose adamw or adafactor")
    return optax.chain(*parts)


# ---------------------------------------------------------------------------------- the step


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def train_step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
    """One optimizer update from a batch of ``[A, b, ...]`` arrays (A accumulation microbatches).

    The dropout key of a step is ``fold_in(rng, step)``: a resumed run draws the same masks.
    """
    obj = state.objective
    norms = obj.normalizers(batch)
    step_rng = jax.random.fold_in(rng, state.step)
    grad_fn = jax.value_and_grad(obj.loss, has_aux=True)

    def micro(i, mb):
        (_, sums), grads = grad_fn(
            state.params, state.apply_fn, mb, jax.random.fold_in(step_rng, i), False, norms
        )
        return grads, sums

    first = jax.tree.map(lambda x: x[0], batch)
    grads, sums = micro(0, first)
    A = jax.tree.leaves(batch)[0].shape[0]
    if A > 1:

        def body(carry, xs):
            i, mb = xs
            g, s = micro(i, mb)
            return (_add(carry[0], g), _add(carry[1], s)), None

        rest = jax.tree.map(lambda x: x[1:], batch)
        (grads, sums), _ = jax.lax.scan(body, (grads, sums), (jnp.arange(1, A), rest))
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = obj.finalize(sums)
    grad_norm = optax.tree.norm(grads)
    metrics.update(grad_norm=grad_norm, lr=state.schedule(state.step))
    if state.skip_nonfinite:
        # A NaN/inf loss or gradient leaves params and optimizer state as they were.
        ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
        metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(state: TrainState, batch: dict) -> dict:
    """Raw metric sums over one ``[b, ...]`` batch (added up over batches by the caller)."""
    norms = state.objective.normalizers(jax.tree.map(lambda x: x[None], batch))
    _, sums = state.objective.loss(
        state.params, state.apply_fn, batch, jax.random.PRNGKey(0), True, norms
    )
    return sums


# ---------------------------------------------------------------------------------- the state


@dataclasses.dataclass
class ShardedState:
    """A train state laid out on a mesh before any of it exists (``create_train_state``).

    Attributes:
      abstract: the TrainState's shapes and dtypes (``jax.ShapeDtypeStruct`` leaves); also the
        restore target of a checkpoint, so that it lands on this mesh whatever mesh wrote it.
      shardings: a TrainState of ``NamedSharding`` leaves, from the params' logical axes.
      init: builds the state on the mesh (each device computes only its shards).
    """

    abstract: TrainState
    shardings: TrainState
    init: Callable[[], TrainState]


def create_train_state(
    model: nn.Module,
    example_inputs: tuple,
    tx: optax.GradientTransformation,
    mesh,
    task: Any = None,
    schedule: Callable | None = None,
    seed: int = 0,
    rules=sharding.LOGICAL_RULES,
    skip_nonfinite: bool = False,
) -> ShardedState:
    """Abstract-first state construction: ``jax.eval_shape(init)`` -> logical partition specs ->
    ``NamedSharding``s -> ``jax.jit(init, out_shardings=...)``. Nothing full-size is built on one
    device.

    Args:
      model: the flax module; ``model.init`` receives ``example_inputs`` (e.g. ``[1, T]`` int
        zeros).
      example_inputs: the positional inputs of ``model.init``.
      tx: the optimizer; its state is sharded like the params it belongs to.
      mesh: the device mesh; ``rules`` map logical axis names onto its axes.
      task: the loss and metrics the train step calls (``jaxformers.tasks``).
      schedule: step -> learning rate (logged by the train step); None logs 0.
      seed: the parameter-init key ``PRNGKey(seed)`` (dropout too at init).
      skip_nonfinite: a NaN/inf loss or gradient leaves params and optimizer state unchanged.
    """
    rng = jax.random.PRNGKey(seed)
    schedule = schedule or _no_schedule

    def init_params(rng):  # boxed: parameters carry their logical axis names
        return model.init({"params": rng, "dropout": rng}, *example_inputs)["params"]

    def init_state(rng):
        params = nn.meta.unbox(init_params(rng))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=tx.init(params),
            apply_fn=model.apply,
            tx=tx,
            objective=task,
            schedule=schedule,
            skip_nonfinite=skip_nonfinite,
        )

    with _MeshRules(mesh, rules):
        boxed = jax.eval_shape(init_params, rng)
        param_sh = sharding.logical_to_sharding(nn.get_partition_spec(boxed), mesh, rules)
        # Unboxed outside the jit trace: no sharding constraint is attached here.
        abstract = jax.eval_shape(init_state, rng)
    param_sh = sharding.fit_to_shapes(param_sh, nn.meta.unbox(boxed))
    opt_sh = sharding.like_params(abstract.opt_state, nn.meta.unbox(boxed), param_sh, mesh)
    shardings = abstract.replace(step=sharding.replicated(mesh), params=param_sh, opt_state=opt_sh)

    def init() -> TrainState:
        with _MeshRules(mesh, rules):
            return jax.jit(init_state, out_shardings=shardings)(rng)

    return ShardedState(abstract, shardings, init)


def _no_schedule(step):
    return jnp.zeros((), jnp.float32)


# ---------------------------------------------------------------------------------- the loop


class WorkdirLock:
    """One run per workdir: an exclusive flock on ``workdir/.lock`` (released if the process
    dies); on object storage a lock object (``storage.ObjectLock``)."""

    def __init__(self, workdir: str):
        # One lock file per process: the hosts of one multi-host run share the workdir.
        self.path = storage.join(
            workdir, ".lock" if jax.process_index() == 0 else f".lock.{jax.process_index()}"
        )
        self.remote = storage.ObjectLock(self.path) if storage.is_url(workdir) else None

    def __enter__(self):
        if self.remote is not None:
            self.remote.acquire()
            return self
        self.f = open(self.path, "w")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                f"{os.path.dirname(self.path)} is in use by another training run; "
                "wait for it or choose another --workdir"
            ) from None
        self.f.write(str(os.getpid()))
        self.f.flush()
        return self

    def check(self) -> None:
        """Raises ``storage.LockLost`` when another run took over the lock object (a local flock
        cannot be taken over while this process lives)."""
        if self.remote is not None:
            self.remote.check()

    @property
    def lost(self) -> str | None:
        """Why the lock is another run's now, once this run knows; else None."""
        return None if self.remote is None else self.remote.lost

    def __exit__(self, *exc):
        if self.remote is not None:
            self.remote.release()
            return
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def summary_writer_class():
    """tensorboardX's ``SummaryWriter``, imported without PyTorch.

    tensorboardX imports ``torch`` at import time when it is installed, only to accept torch
    tensors (this module passes floats). In a process already running JAX that import took 16 s
    of a 31 s tiny T5 run (py-spy, 2 cores). Unless torch is already loaded, ``torch`` reads as
    absent while tensorboardX loads (its import of it is guarded), then is importable again.
    """
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError meanwhile
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Appends metrics to ``metrics.jsonl`` and TensorBoard event files (tensorboardX, no
    TensorFlow). On object storage, where nothing can be appended, the file is rewritten whole at
    most every ``flush_seconds`` and on ``flush``/``close``, only while ``lock`` (the run's
    ``WorkdirLock``) is still this run's: a run that lost it to another does not rewrite that run's
    metrics."""

    def __init__(self, workdir: str, enabled: bool = True, flush_seconds: float = 60.0, lock=None):
        self.enabled, self.lock = enabled, lock
        if not enabled:
            return
        self.path = storage.join(workdir, "metrics.jsonl")
        self.remote = storage.is_url(workdir)
        self.flush_seconds, self.flushed_at, self.dirty = flush_seconds, time.time(), False
        if self.remote:
            self.lines = storage.read_text(self.path) if storage.exists(self.path) else ""
        else:
            self.jsonl = open(self.path, "a")
        self.tb = None
        logdir = storage.join(workdir, "tensorboard")
        if self.remote and not logdir.startswith(("gs://", "s3://")):
            return  # tensorboardX writes local folders, gs:// and s3:// only
        try:
            self.tb = summary_writer_class()(logdir)
        except ImportError:  # TensorBoard files are a convenience, the JSONL is the record
            pass

    def write(self, step: int, split: str, metrics: dict) -> None:
        if not self.enabled:
            return
        rec = {"step": int(step), "split": split, **{k: float(v) for k, v in metrics.items()}}
        line = json.dumps(rec) + "\n"
        if self.remote:
            self.lines += line
            self.dirty = True
            if time.time() - self.flushed_at > self.flush_seconds:
                self.flush()
        else:
            self.jsonl.write(line)
            self.jsonl.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{split}/{k}", float(v), int(step))

    def flush(self) -> None:
        if self.enabled and self.remote and self.dirty:
            if self.lock is not None:
                self.lock.check()
            storage.write_text(self.path, self.lines)
            self.flushed_at, self.dirty = time.time(), False

    def close(self):
        if self.enabled:
            if self.remote and self.lock is not None and self.lock.lost:
                if self.dirty:
                    print(f"not written to {self.path}: {self.lock.lost}", file=sys.stderr)
            elif self.remote:
                self.flush()
            else:
                self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


def check_workdir(workdir: str) -> None:
    try:
        storage.makedirs(workdir)
        # per process: hosts share it
        probe = storage.join(workdir, f".write_test.{jax.process_index()}.{os.getpid()}")
        size = 1024 if storage.is_url(workdir) else 1024 * 1024  # a full disk fails here
        storage.write_bytes(probe, b"\0" * size)
        storage.remove(probe)
    except OSError as e:
        raise RuntimeError(
            f"workdir {workdir} is not writable ({e.strerror or e}); "
            "choose another --workdir or free space"
        ) from e


# ------------------------------------------------------------------------------ the run's record

# What may change between the resumes of one run. Its length: a longer run continues (with
# optim.total_steps=0 the schedule then follows the new length, as t5x lets a run go on). How the
# work is laid out, the same arithmetic on other devices: mesh (not recorded at all),
# optim.grad_accum (the same examples at each step), model.remat, model.attention_impl,
# data.data_dir (where prepared data is kept), data.worker_count (the same stream from any number
# of data workers). And how the run reports: eval, logging, checkpoint,
# sample, progress, peak_tflops, nan_policy (not recorded). Every other setting shapes what is
# trained: a checkpoint written with another value of it does not continue this run.
LENGTH_KEYS = ("steps", "optim.total_steps")
# The metrics.jsonl split that records what a run's final evaluation covered (eval_batches).
EVAL_SCOPE = "eval_scope"
_LAYOUT_KEYS = (
    "optim.grad_accum",
    "model.remat",
    "model.attention_impl",
    "data.data_dir",
    "data.worker_count",
)

# What a run writes in its workdir, set aside by ``restart``; the prepared data (data/) stays,
# a cache keyed by what it was built from.
# What a run on a remote workdir builds in a local mirror of it and then uploads.
STAGED = ("tokenizer", "data")
RUN_FILES = (
    "checkpoints",
    "checkpoints_damaged",
    "params",
    "model.json",
    "metrics.jsonl",
    "tensorboard",
    "loss.png",
    "tokenizer",
    "labels.json",  # a classifier's label names (token classification)
    "question_answering.json",  # a question-answering run's window settings
)


def run_config(exp: Experiment) -> dict:
    """What a run's checkpoints depend on, recorded in each: a flat dict of dotted keys as
    ``--set`` spells them (``"model.n_embd"``, ``"optim.lr"``, ``"batch_size"``) -> JSON values.
    Holds the model family and config, the task and its settings, data, optimizer, batch size,
    seed and the length (``LENGTH_KEYS``, which may change); not the layout keys."""
    flat: dict[str, Any] = {
        "model.family": models.of_config(exp.model).name,
        "task": exp.task.name,
    }
    for prefix, cfg in (
        ("model", exp.model),
        ("task", exp.task),
        ("data", exp.data),
        ("optim", exp.optim),
    ):
        for f in dataclasses.fields(cfg):
            flat[f"{prefix}.{f.name}"] = getattr(cfg, f.name)
    flat.update(batch_size=exp.batch_size, seed=exp.seed, steps=exp.steps)
    for k in _LAYOUT_KEYS:
        flat.pop(k, None)
    return json.loads(json.dumps(flat, default=str))  # tuples as lists, as a checkpoint reads back


def set_run_aside(workdir: str) -> str | None:
    """Moves a previous run's files (``RUN_FILES``) into ``workdir/previous-<time>/``; returns
    that folder, or None when there was nothing to move."""
    present = [n for n in RUN_FILES if storage.exists(storage.join(workdir, n))]
    if not present:
        return None
    aside = storage.join(workdir, "previous-" + time.strftime("%Y%m%d-%H%M%S"))
    base, n = aside, 1
    while storage.exists(aside):
        n += 1
        aside = f"{base}-{n}"
    storage.makedirs(aside)
    for name in present:
        storage.move(storage.join(workdir, name), storage.join(aside, name))
    return aside


@dataclasses.dataclass
class RunResult:
    steps_run: int
    final_step: int
    train_losses: dict  # step -> loss, for the steps logged in this run
    eval_metrics: dict
    tokens_per_second: float
    mfu: float
    compile_seconds: float
    wall_seconds: float
    preempted: bool = False


class Trainer:
    """Builds everything an experiment needs on the mesh and runs the loop."""

    def __init__(
        self, exp: Experiment, workdir: str, data=None, devices=None, restart: bool = False
    ):
        """``data`` replaces the experiment's corpus (tests); ``devices`` a subset of
        jax.devices(). ``restart`` moves a previous run in ``workdir`` aside (``set_run_aside``)
        and starts afresh; without it a workdir whose checkpoints were written with other settings
        (``run_config``) refuses to train."""
        self.exp, self.workdir = exp, storage.absolute(workdir)
        check_workdir(self.workdir)
        if restart:
            self._restart()
        self.mesh = sharding.make_mesh(exp.mesh.shape, devices)
        sharding.check_batch(exp.batch_size, self.mesh)
        if (exp.batch_size // exp.optim.grad_accum) % sharding.data_parallel_size(self.mesh):
            raise ValueError(
                f"batch_size={exp.batch_size} / grad_accum={exp.optim.grad_accum} "
                "must be a multiple of the "
                f"{sharding.data_parallel_size(self.mesh)} data-parallel shards"
            )
        self.model = models.build_model(exp.model)
        self.objective = exp.task
        if data is None:
            # Under the run's lock: a second run started on a busy workdir stops here, before
            # it trains a tokenizer or writes token files over those of the run in progress.
            with WorkdirLock(self.workdir):
                data = self._build_data_in_turn()
        self.data = data
        # A budget in tokens or epochs becomes a number of steps once the data is known.
        exp = self.exp = exp.resolve_steps(
            exp.batch_size * self.data.tokens_per_example, self.data.steps_per_epoch(exp)
        )
        self.schedule = make_schedule(exp.optim, exp.optim.total_steps or exp.steps)
        self.tx = make_optimizer(exp.optim, self.schedule)
        self.rules = sharding.LOGICAL_RULES
        self.sharded = create_train_state(
            self.model,
            self.data.dummy_inputs(),
            self.tx,
            self.mesh,
            exp.task,
            self.schedule,
            exp.seed,
            self.rules,
            exp.nan_policy == "skip",
        )
        self.abstract_state, self.state_shardings = self.sharded.abstract, self.sharded.shardings

    def _restart(self) -> None:
        # Before the data is built: the tokenizer of the old run goes aside with it.
        with WorkdirLock(self.workdir):
            if jax.process_index() == 0:
                aside = set_run_aside(self.workdir)
                if aside:
                    print(f"--restart: moved the previous run to {aside}", flush=True)
            launch.barrier("jaxformers-restart")

    def _build_data_in_turn(self):
        """Process 0 prepares datasets, tokenizer and token files first; the others then read
        them."""
        if jax.process_index() == 0:
            data = self._build_data()
        launch.barrier("jaxformers-data-prepared")
        if jax.process_index() != 0:
            data = self._build_data()
        return data

    def _build_data(self):
        """The task's data. A remote workdir's tokenizer and prepared data (``STAGED``) are read
        and written by libraries that open local files: they are built in a local mirror of the
        workdir (``storage.mirror``), fetched from it first and sent back after (process 0)."""
        if not storage.is_url(self.workdir):
            return self.exp.task.build_data(self.exp, self.workdir)
        local = storage.download(self.workdir, only=STAGED)
        data = self.exp.task.build_data(self.exp, local)
        if jax.process_index() == 0:
            storage.upload(self.workdir, only=STAGED)
        return data

    def mesh_context(self):
        return _MeshRules(self.mesh, self.rules)

    # -- state
    def init_state(self) -> TrainState:
        return self.sharded.init()

    def restore_or_init(self, ckpt: checkpoint.Checkpointer) -> tuple[TrainState, int]:
        abstract = checkpoint.abstract_like(
            self.abstract_state.arrays(), self.state_shardings.arrays()
        )
        try:
            found = (
                ckpt.restore_latest_good(abstract, check=self._check_config)
                if ckpt.all_steps()
                else None
            )
        except checkpoint.CheckpointMismatch as e:
            if "--restart" in str(e):
                raise
            raise checkpoint.CheckpointMismatch(f"{e}. {self._restart_advice()}") from e
        if found is None:
            state = self.init_state()
            if self.exp.init_from:
                state = state.replace(params=self._pretrained_params(state.params))
            return state, 0
        step, arrays, _ = found
        state = self.abstract_state.replace(**arrays)
        self._restore_data_position(ckpt, step)
        return state, step

    def _restore_data_position(self, ckpt: checkpoint.Checkpointer, step: int) -> None:
        """A streaming input pipeline continues where the checkpoint's left off (its saved grain
        state); without one (another process count, an older checkpoint) it draws ``step``
        batches to get there, which is exact but costs their work."""
        train = self.data.train
        if not hasattr(train, "checkpoint_item"):
            return  # batches are a pure function of the step
        target = streaming.DataState(target=train)
        try:
            if ckpt.restore_data(step, target):
                return
        except Exception as e:  # a state of another pipeline layout (e.g. another worker count)
            log.warning("cannot restore the input pipeline position (%s: %s)", type(e).__name__, e)
            train.close()
        train.skip_to(step)

    def _check_config(self, step: int, meta: dict) -> None:
        """Refuses a checkpoint written with other settings that shape what is trained
        (``run_config``); a different length only stretches or shortens the run."""
        saved = meta.get("config")
        if saved is None:  # written before checkpoints recorded their configuration
            if meta.get("fingerprint") not in (None, self.fingerprint()):
                log.warning(
                    "the checkpoint was written by a different configuration; resuming anyway"
                )
            return
        now = run_config(self.exp)
        diffs = [
            k for k in sorted(set(saved) & set(now)) if saved[k] != now[k] and k not in LENGTH_KEYS
        ]
        if diffs:
            shown = [f"  {k}: {saved[k]!r} in the checkpoint, {now[k]!r} now" for k in diffs[:12]]
            if len(diffs) > 12:
                shown.append(f"  ... and {len(diffs) - 12} more")
            raise checkpoint.CheckpointMismatch(
                f"{self.workdir} holds a run with another configuration (its checkpoint at step "
                f"{step} differs in {len(diffs)} setting{'s' * (len(diffs) > 1)}):\n"
                + "\n".join(shown)
                + f"\n{self._restart_advice()}"
            )
        changed = [k for k in LENGTH_KEYS if k in saved and saved[k] != now.get(k)]
        if changed:
            print(
                "the run's length changed ("
                + ", ".join(f"{k} {saved[k]} -> {now[k]}" for k in changed)
                + f"); resuming from step {step}, the learning-rate schedule now follows "
                f"{self.exp.optim.total_steps or self.exp.steps} steps",
                flush=True,
            )

    def _restart_advice(self) -> str:
        return (
            "To continue that run, train with its settings. To start a new run in this workdir, "
            "add --restart (train(..., restart=True)): the old run is moved aside to "
            f"{self.workdir}/previous-<time>/. To start from its trained weights with the new "
            f"settings, give another --workdir and --set init_from={self.workdir} (it reads the "
            "params a finished run exports)"
        )

    def _pretrained_params(self, params):
        """``exp.init_from``'s params merged into freshly initialised ones (heads it lacks stay
        fresh)."""
        merged, fresh = load_pretrained(self.exp.init_from, jax.device_get(params), self.exp.model)
        print(
            f"initialised from {self.exp.init_from}; "
            f"freshly initialised: {', '.join(fresh) or 'nothing'}",
            flush=True,
        )
        return jax.device_put(merged, self.state_shardings.params)

    def fingerprint(self) -> str:
        e = self.exp
        return pipeline.fingerprint(
            [e.model, e.data, e.task, e.optim, e.batch_size, e.steps, e.seed]
        )

    def compiled_steps(self):
        spec = self.data.train_spec()  # feature -> ndim of one microbatch ([b, ...])
        batch_sh = {
            k: sharding.batch_sharding(self.mesh, nd + 1, leading=1) for k, nd in spec.items()
        }
        eval_sh = {k: sharding.batch_sharding(self.mesh, nd) for k, nd in spec.items()}
        step = jax.jit(
            train_step,
            in_shardings=(self.state_shardings, batch_sh, None),
            out_shardings=(self.state_shardings, None),
            donate_argnums=0,
        )
        ev = jax.jit(eval_step, in_shardings=(self.state_shardings, eval_sh))
        return step, ev

    def num_eval_batches(self) -> int:
        """The whole validation split (every example or token once), or the first
        ``eval_batches`` batches of it when that is set and smaller."""
        val, limit = self.data.val, self.exp.eval_batches
        if hasattr(val, "batches_up_to"):  # a stream counts its batches by reading them
            return val.batches_up_to(limit or None)
        return min(val.num_batches, limit) if limit else val.num_batches

    def evaluate(self, state, eval_fn) -> dict:
        total = None
        n = self.num_eval_batches()
        with self.mesh_context():
            for i in range(n):
                local = jax.tree.map(lambda x: x[0], self.data.eval_batch(i))
                sums = eval_fn(state, sharding.host_to_global(local, self.mesh))
                total = sums if total is None else _add(total, sums)
            # Tasks scored on generated text (text-to-text) decode the same examples once more.
            decode = getattr(self.data, "decode_metrics", None)
            generated = decode(self.model, state.params, n) if decode else {}
        total = jax.device_get(total)
        metrics = {k: float(v) for k, v in self.objective.finalize(total).items()}
        metrics.update(generated)
        if self.data.num_val_bytes and n == self.data.val.num_batches:
            # Every validation token scored once: nats over the text's bytes compare across
            # tokenizers (the EOS between documents is scored, its byte count is 0).
            metrics["bits_per_byte"] = float(total["loss"]) / math.log(2) / self.data.num_val_bytes
        return metrics

    # -- the loop
    def run(self, stop_at: int | None = None) -> RunResult:
        exp = self.exp
        with WorkdirLock(self.workdir) as lock:
            ckpt = checkpoint.Checkpointer(
                storage.join(self.workdir, "checkpoints"),
                exp.checkpoint.keep,
                exp.checkpoint.async_save,
            )
            try:
                t_start = time.time()
                # Restored before anything is written: a refused workdir stays as it was.
                state, start = self.restore_or_init(ckpt)
                writer = MetricWriter(self.workdir, enabled=jax.process_index() == 0, lock=lock)
                try:
                    return self._loop(ckpt, writer, stop_at, state, start, t_start, lock)
                finally:
                    writer.close()
                    if hasattr(self.data.train, "close"):
                        self.data.train.close()  # the input pipeline's worker processes
            finally:
                ckpt.close()

    def _loop(self, ckpt, writer, stop_at, state, start, t_start, lock) -> RunResult:
        exp = self.exp
        if start:
            print(f"resuming from step {start} in {self.workdir}", flush=True)
        if start > exp.steps:
            print(
                f"the workdir's checkpoint is at step {start}, past steps={exp.steps}: nothing "
                f"to train (--set steps=N with N > {start} continues the run)",
                flush=True,
            )
        end = exp.steps if stop_at is None else min(stop_at, exp.steps)
        if start == exp.steps:
            finished = self._finished_eval(start)
            if finished is not None:
                print(f"the run finished at step {start} (its evaluation and export are in the "
                      "workdir): nothing to do; --set steps=N trains on", flush=True)  # fmt: skip
                return RunResult(0, start, {}, finished, 0.0, 0.0, 0.0, time.time() - t_start)
        step_fn, eval_fn = self.compiled_steps()
        rng = jax.random.PRNGKey(exp.seed + 1)
        tokens_per_step = exp.batch_size * self.data.tokens_per_example
        flops_per_step = self.data.flops_per_example(exp.model) * exp.batch_size
        peak, peak_src = perf.peak_tflops(exp.peak_tflops, getattr(exp.model, "dtype", "float32"))
        n_dev = (
            1 if jax.devices()[0].platform == "cpu" else self.mesh.size
        )  # a CPU peak is machine-wide
        preempted = _PreemptionFlag(exp.log_every)
        bar = _progress(exp, start, end)
        losses, eval_metrics = {}, {}
        pending = None
        compile_s, t_window, window_steps, tps, mfu = 0.0, None, 0, 0.0, 0.0
        step = start
        with self.mesh_context(), preempted:
            for step in range(start, end):
                local = self.data.train_batch(step)
                batch = sharding.host_to_global(local, self.mesh, leading=1)
                t0 = time.time()
                state, metrics = step_fn(state, batch, rng)
                if step == start:
                    jax.block_until_ready(metrics)
                    compile_s = time.time() - t0
                    t_window, window_steps = time.time(), 0
                else:
                    window_steps += 1
                # Look at the previous step's metrics only now: the device never waits on the host.
                if pending is not None:
                    self._after_step(*pending, writer, losses, bar, ckpt, end)
                pending = (step, metrics)
                if window_steps and (step + 1) % exp.log_every == 0:
                    jax.block_until_ready(metrics)
                    dt = (time.time() - t_window) / window_steps
                    tps = tokens_per_step / dt
                    mfu = perf.mfu(flops_per_step, dt, peak, n_dev)
                    bar.set_postfix_str(
                        f"tok/s={tps:,.0f} MFU={perf.describe_mfu(mfu)}", refresh=False
                    )
                bar.update(1)
                done = step + 1
                # Decided at the same loop position on every process, so all save the same step.
                # The last step ends the run anyway (its eval and export included).
                stop = done != end and preempted.agreed(done)
                if exp.eval_every and done % exp.eval_every == 0 and done != end:
                    eval_metrics = self.evaluate(state, eval_fn)
                    writer.write(done, "eval", eval_metrics)
                if done % exp.checkpoint.every == 0 or done == end or stop:
                    self._after_step(
                        *pending, writer, losses, bar, ckpt, end
                    )  # never save a non-finite state
                    pending = None
                    lock.check()  # never over a run that took this workdir over
                    ckpt.save(
                        done,
                        state.arrays(),
                        {
                            "step": done,
                            "data_position": done,
                            "fingerprint": self.fingerprint(),
                            "config": run_config(exp),
                        },
                        data=self._data_position(),
                    )
                    writer.flush()  # a remote metrics.jsonl is current with each checkpoint
                if stop:
                    break
            if pending is not None:
                self._after_step(*pending, writer, losses, bar, ckpt, end)
        bar.close()
        final = int(jax.device_get(state.step))
        if preempted.set:
            ckpt.wait()
            print(
                f"preempted ({preempted.stopped_by}): saved a checkpoint at step {final} "
                f"in {self.workdir}; run the same command again to resume",
                flush=True,
            )
        elif final == exp.steps:
            eval_metrics = self.evaluate(state, eval_fn)
            writer.write(final, "eval", eval_metrics)
            # What the final evaluation covered: a rerun with another eval_batches evaluates again.
            writer.write(final, EVAL_SCOPE, {"eval_batches": exp.eval_batches})
            lock.check()
            self.export(state)
        if peak_src.startswith(perf.MEASURED) and tps > 0 and jax.process_index() == 0:
            # The CPU peak measured again after the work: the better of the two is the peak (one
            # taken while the machine was busy is too low and inflates the MFU).
            peak = perf.best_measured(peak, getattr(exp.model, "dtype", "float32"))
            mfu = perf.mfu(flops_per_step, tokens_per_step / tps, peak, n_dev)
        perf_rec = {
            "tokens_per_second": tps,
            "mfu": mfu,
            "peak_tflops": peak,
            "peak_source": peak_src,
            "compile_seconds": compile_s,
            "flops_per_token": flops_per_step / tokens_per_step,
        }
        writer.write(final, "perf", {k: v for k, v in perf_rec.items() if isinstance(v, float)})
        return RunResult(
            final - start,
            final,
            losses,
            eval_metrics,
            tps,
            mfu,
            compile_s,
            time.time() - t_start,
            preempted.set,
        )

    def _finished_eval(self, step: int) -> dict | None:
        """The final evaluation of a run that finished at ``step`` with its export written, read
        from ``metrics.jsonl``; None when something of the run's end is missing or it covered
        another ``eval_batches`` than asked now (then it is done again) or on several processes
        (which must all decide alike: their disks may differ)."""
        path = storage.join(self.workdir, "metrics.jsonl")
        if jax.process_count() > 1 or not all(
            storage.exists(storage.join(self.workdir, f)) for f in ("params", "model.json")
        ):
            return None
        if not storage.exists(path):
            return None
        found, scope = None, None
        for line in storage.read_text(path).splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if rec.get("step") != step:
                continue
            if rec.get("split") == "eval":
                found = {k: v for k, v in rec.items() if k not in ("step", "split")}
            elif rec.get("split") == EVAL_SCOPE:
                scope = rec
        # Runs from before the scope was recorded keep their evaluation.
        if found is not None and scope is not None:
            was = int(scope["eval_batches"])
            if was != self.exp.eval_batches:
                print(f"the run finished at step {step}; evaluating it again: eval_batches "
                      f"{was} -> {self.exp.eval_batches}", flush=True)  # fmt: skip
                return None
        return found

    def _data_position(self):
        """A streaming pipeline's position now, saved with the checkpoint (None otherwise)."""
        item = getattr(self.data.train, "checkpoint_item", None)
        return item() if item else None

    def _after_step(self, step, metrics, writer, losses, bar, ckpt, end):
        """Checks a finished step's loss (one scalar to the host) and logs it on log steps."""
        loss = float(jax.device_get(metrics["loss"]))
        if not math.isfinite(loss) and self.exp.nan_policy == "stop":
            ckpt.wait()
            good = ckpt.latest_step()
            where = f"step {good} in {self.workdir}/checkpoints" if good else "none yet"
            raise FloatingPointError(
                f"loss is {loss} at step {step + 1}; the last good checkpoint: {where}. "
                "Lower optim.lr, raise optim.warmup_steps or keep optim.clip_norm > 0; "
                "--set nan_policy=skip skips such updates instead"
            )
        if (step + 1) % self.exp.log_every and step + 1 != end:
            return
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        losses[step + 1] = m["loss"]
        writer.write(step + 1, "train", m)
        bar.set_description(f"loss {m['loss']:.3f}", refresh=False)

    def export(self, state) -> None:
        """Params-only export plus what inference needs to rebuild the model."""
        checkpoint.export_params(state.params, storage.join(self.workdir, "params"))
        config = self.exp.model
        eos = getattr(getattr(self.data, "tokenizer", None), "eos_id", None)
        if models.of_config(config).decoder == "causal" and eos is not None:
            # A tokenizer trained here has its own end-of-text id: exports must say so.
            config = dataclasses.replace(config, eos_token_id=eos, bos_token_id=eos)
        if jax.process_index() == 0:
            inference.write_model_json(self.workdir, config)


def load_pretrained(path: str, params: dict, config: Any) -> tuple[dict, list[str]]:
    """``init_from``: the params of ``path`` (a training workdir, an HF directory or a Hub id, read
    by ``inference.load``) merged into ``params``, the fresh ones of a model of ``config``
    (``merge_pretrained``). Returns (merged params, paths left freshly initialised)."""
    _, loaded, _ = inference.load(path)
    family = models.of_config(config)
    vocab_axes = {
        "/".join(layers.layer_path(w.path, config.scan_layers)[0]): w.vocab_axis
        for w in family.module.hf_weights(config)
        if w.vocab_axis is not None
    }
    return merge_pretrained(
        params,
        jax.device_get(loaded),
        base=family.base,
        vocab=(config.vocab_size, vocab_axes),
    )


def _numbered(tree: dict, name: str) -> int:
    """How many layers of the unscanned stack ``name`` (``name_0`` ...) ``tree`` holds."""
    n = 0
    while layers.layer_name(name, n) in tree:
        n += 1
    return n


def _stack_len(stack: Any) -> int:
    """The layer count of a scanned stack: its leaves' leading "layers" dimension."""
    return int(np.shape(jax.tree.leaves(stack)[0])[0])


def _layers_differ(path: str, theirs: int, ours: int) -> ValueError:
    return ValueError(
        f"pretrained {path} has {theirs} layers, the model wants {ours}; "
        "the model config must match the checkpoint's"
    )


def _stack_source(k: str, v: Any, target: dict, source: dict, path: str) -> Any:
    """``source``'s entry for ``target[k]`` when the two lay a layer stack out differently
    (``layers.block_stack``: scanned, one ``name`` with the layers stacked on a leading axis;
    unscanned, ``name_0`` ... ``name_{L-1}``): stacked or unstacked to the target's layout, or
    None when ``source`` has no such stack. Differing layer counts are refused."""
    if isinstance(v, dict) and layers.layer_name(k, 0) in source:  # ours scanned, theirs not
        ours, theirs = _stack_len(v), _numbered(source, k)
        if ours != theirs:
            raise _layers_differ(path, theirs, ours)
        each = [source[layers.layer_name(k, i)] for i in range(theirs)]
        return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *each)
    name, _, i = k.rpartition("_")
    if name and i.isdigit() and isinstance(source.get(name), dict):  # theirs scanned, ours not
        ours, theirs = _numbered(target, name), _stack_len(source[name])
        if ours != theirs:
            raise _layers_differ(f"{path[: -len(k)]}{name}", theirs, ours)
        return jax.tree.map(lambda x: np.asarray(x)[int(i)], source[name])
    return None


def _revocab(src: Any, shape: tuple[int, ...], path: str, vocab: tuple | None) -> Any:
    """``src`` fitted to ``shape`` when ``path`` is a vocabulary parameter and the two differ only
    in vocabulary padding (``vocab_pad_multiple``) on its vocabulary axis: the real rows are kept,
    the padding is zeros (as ``hf.params_from_hf`` pads), so a checkpoint trained with another
    padding, or an unpadded HF one, loads. None when that is not the case."""
    if vocab is None or path not in vocab[1] or np.shape(src) == tuple(shape):
        return None
    if np.ndim(src) != len(shape):
        return None
    real, a = vocab[0], vocab[1][path]
    same_elsewhere = all(x == y for i, (x, y) in enumerate(zip(np.shape(src), shape)) if i != a)
    if not same_elsewhere or np.shape(src)[a] < real or shape[a] < real:
        return None
    rows = np.take(np.asarray(src), np.arange(real), axis=a)
    pad = [(0, 0)] * rows.ndim
    pad[a] = (0, shape[a] - real)
    return np.pad(rows, pad)


def merge_pretrained(
    target: dict,
    source: dict,
    prefix: str = "",
    base: str | None = None,
    vocab: tuple[int, dict[str, int]] | None = None,
) -> tuple[dict, list[str]]:
    """Takes every tensor of ``target`` that ``source`` has (same path and shape).

    ``base`` is the subtree a head model keeps its base model in (the registry's ``Family.base``,
    "bert" for BERT): a base model saved on its own (BertModel) fills that subtree of a model with
    a head. Layer stacks are converted between the scanned and the unscanned layout (stacked or
    unstacked). A tensor of another shape, or a stack of another number of layers, is refused with
    both sizes named: it is never left silently random. Returns (merged params, paths left freshly
    initialised: what ``source`` does not have at all, e.g. a new task head). ``vocab``:
    (the target config's vocab_size, {path of a vocabulary parameter: its vocabulary axis}); such
    a tensor differing only in its vocabulary padding is fitted (``_revocab``).
    """
    if not prefix and base and base in target and base not in source:
        source = {base: source}
    for k in target:  # unscanned on both sides: the same number of layers
        name, _, i = k.rpartition("_")
        if name and i == "0" and name not in target and _numbered(source, name):
            ours, theirs = _numbered(target, name), _numbered(source, name)
            if ours != theirs:
                raise _layers_differ(f"{prefix}{name}", theirs, ours)
    merged, fresh = {}, []
    for k, v in target.items():
        path = f"{prefix}{k}"
        src = source[k] if k in source else _stack_source(k, v, target, source, path)
        if src is None:
            merged[k] = v
            fresh.append(path)
        elif isinstance(v, dict):
            merged[k], f = merge_pretrained(v, src, path + "/", vocab=vocab)
            fresh += f
        elif _revocab(src, np.shape(v), path, vocab) is not None:
            merged[k] = _revocab(src, np.shape(v), path, vocab).astype(np.asarray(v).dtype)
        elif np.shape(src) != np.shape(v):
            raise ValueError(
                f"pretrained {path} has shape {np.shape(src)}, "
                f"the model wants {np.shape(v)}; "
                "the model config must match the checkpoint's"
            )
        else:
            merged[k] = np.asarray(src, np.asarray(v).dtype)
    return merged, fresh


class _MeshRules:
    """``with`` the mesh set for sharding constraints and the logical-axis rules active."""

    def __init__(self, mesh, rules):
        self.stack = contextlib.ExitStack()
        self.mesh, self.rules = mesh, rules

    def __enter__(self):
        self.stack.enter_context(jax.set_mesh(self.mesh))
        self.stack.enter_context(nn.logical_axis_rules(self.rules))
        return self

    def __exit__(self, *exc):
        return self.stack.__exit__(*exc)


class _PreemptionFlag:
    """SIGTERM or SIGINT asks for a graceful stop: the loop finishes its step, every process saves
    the same step once, and the run exits.

    Each process only sets a local flag in its handler; ``agreed(done)`` turns the flags into one
    decision that is the same on every process. A second Ctrl-C (SIGINT) aborts at once with
    KeyboardInterrupt, as Python's default does. (JAX's own preemption sync point watches SIGTERM
    only, through a C++ notifier that a Python handler replaces, so it is not used.)

    One process decides on its own, at every step. Several processes agree with a tiny collective
    (``process_allgather`` of one int32 per process: the signal number, 0 for none). It is called
    by every process at the same loop position on the same steps: those where ``done`` is a
    multiple of ``log_every``, where the loop already waits for the device. Measured on CPU with 2
    processes (gloo): 2.3 ms a call, so every step would cost 2.3 ms plus a device sync per step;
    at ``log_every`` the stop comes at most ``log_every - 1`` steps later.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, every: int = 1):
        self.every = every
        self.signum = 0  # this process's request (the first signal), 0 for none
        self.interrupts = 0
        self.stopped_by = None  # the signal's name once the processes agreed to stop
        self.old = {}

    @property
    def set(self) -> bool:
        return self.stopped_by is not None

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self.old[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread
                pass
        return self

    def _handler(self, signum, frame):
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                raise KeyboardInterrupt
            print(
                "stopping at the next step boundary; press Ctrl-C again to abort",
                file=sys.stderr,
                flush=True,
            )
        if not self.signum:
            self.signum = int(signum)

    def agreed(self, done: int) -> bool:
        """Whether every process stops after step ``done``; the same answer on all of them."""
        if jax.process_count() == 1:
            signum = self.signum
        elif done % self.every:
            return False
        else:
            flags = np.asarray(multihost_utils.process_allgather(np.int32(self.signum)))
            signum = next((int(f) for f in flags.ravel() if f), 0)
        if signum:
            self.stopped_by = signal.Signals(signum).name
        return self.set

    def __exit__(self, *exc):
        for sig, old in self.old.items():
            signal.signal(sig, old)


class _LineProgress:
    """The progress bar's content as one plain line per log interval, for a log file: a bar's
    carriage-return refreshes would write a line each."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.total, self.n, self.enabled = total, initial, enabled
        self.t0, self.n0, self.postfix = time.time(), initial, ""

    def update(self, k: int = 1) -> None:
        self.n += k

    def set_postfix_str(self, s: str, refresh: bool = False) -> None:
        self.postfix = s

    def set_description(self, s: str, refresh: bool = False) -> None:
        if not self.enabled:
            return
        done = self.n - self.n0
        eta = (self.total - self.n) * (time.time() - self.t0) / done if done else None
        parts = [f"step {self.n}/{self.total}", s, self.postfix]
        if eta is not None:
            parts.append(f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        print(" ".join(p for p in parts if p), flush=True)

    def close(self) -> None:
        pass


def _progress(exp, start, end):
    """A tqdm bar on a terminal; plain lines (``_LineProgress``) when stderr is redirected."""
    enabled = exp.progress and jax.process_index() == 0
    if not sys.stderr.isatty():
        return _LineProgress(end, start, enabled)
    return tqdm(
        total=end,
        initial=start,
        disable=not enabled,
        unit="step",
        dynamic_ncols=True,
        mininterval=1.0,
    )


def train(
    exp: Experiment,
    workdir: str,
    stop_at: int | None = None,
    devices=None,
    restart: bool = False,
) -> RunResult:
    """Trains ``exp`` in ``workdir``: resumes if it holds checkpoints of this configuration,
    refuses if they were written with another (``restart=True`` moves that run aside first)."""
    return Trainer(exp, workdir, devices=devices, restart=restart).run(stop_at=stop_at)
