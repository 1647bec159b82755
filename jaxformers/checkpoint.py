"""Checkpoints through orbax: the training state with auto-resume, and params-only exports.

A workdir holds ``checkpoints/<step>/{state,meta}``: ``state`` is the sharded pytree
``{"step", "params", "opt_state"}`` written asynchronously (training goes on while it is written),
``meta`` a small JSON record (data position, the run's configuration). Restoring uses an
abstract target that carries the shardings of the *current* mesh, so a checkpoint saved on one
mesh restores onto another.

Restoring tells three failures apart. A checkpoint that cannot be read (truncated or garbled
files), or whose arrays read back other than they were saved (``meta`` holds a checksum of each:
orbax decodes some garbled compressed chunks into other numbers without an error), is damaged: it
is set aside and the previous one is tried. One that reads but does not fit
the state now configured (other shapes, another tree) is a changed configuration, never damage:
``CheckpointMismatch``. A read that fails for a passing reason (an I/O or network error, a
timeout) is tried again a few times, then ``CheckpointUnreachable``; nothing is set aside.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jaxformers import storage
from jaxformers.launch import barrier

log = logging.getLogger("jaxformers")

# Seconds to wait before each new try of a read that failed for a passing reason (then give up).
RETRY_DELAYS = (1.0, 4.0, 16.0)

# OSError numbers of storage that is unreachable for now (a network filesystem, a bucket), not of
# files that are broken.
_TRANSIENT_ERRNOS = {
    errno.EIO,
    errno.ETIMEDOUT,
    errno.EAGAIN,
    errno.EBUSY,
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.ENETRESET,
    errno.EPIPE,
}
# TensorStore (which reads orbax's arrays, on GCS too) reports such failures with these status
# codes in the message of a ValueError.
_TRANSIENT_CODES = ("UNAVAILABLE:", "DEADLINE_EXCEEDED:")
# What orbax says when the restore target and a readable checkpoint disagree (both ValueError, as
# most read failures of damaged files are): measured with orbax-checkpoint 0.12.
_MISMATCH_MESSAGES = ("tree structures do not match", "is not compatible with the stored shape")


CHECKSUMS = "checksums"  # the meta key: the saved arrays' checksums, sorted


@jax.jit
def _checksums(leaves: list) -> jax.Array:
    """A uint32 checksum of each array: its elements' bits, each times an odd number that depends
    on its position, summed modulo 2**32 (a changed, moved or swapped element changes it)."""
    out = []
    for x in leaves:
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        x = jnp.ravel(x)
        if x.dtype == jnp.bool_:
            bits = x.astype(jnp.uint32)
        else:
            unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
            bits = jnp.ravel(jax.lax.bitcast_convert_type(x, unsigned)).astype(jnp.uint32)
        weight = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) | jnp.uint32(1)
        out.append(jnp.sum(bits * weight, dtype=jnp.uint32))
    return jnp.stack(out) if out else jnp.zeros((0,), jnp.uint32)


def checksums(state: Any) -> list[int]:
    """The checksums of ``state``'s arrays, sorted (independent of how the tree names them)."""
    return sorted(int(c) for c in np.asarray(jax.device_get(_checksums(jax.tree.leaves(state)))))


class CheckpointDamaged(ValueError):
    """A checkpoint whose arrays read back other than they were saved."""


class CheckpointMismatch(ValueError):
    """A checkpoint that reads but was written by another configuration (not damage)."""


class CheckpointUnreachable(RuntimeError):
    """A checkpoint that could not be read for a passing reason, after retries (not damage)."""


def _causes(e: BaseException):
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_transient(e: BaseException) -> bool:
    """True for an error of storage that is unreachable for now: a timeout, a lost connection,
    EIO, a TensorStore UNAVAILABLE / DEADLINE_EXCEEDED (anywhere in the exception's chain)."""
    for x in _causes(e):
        if isinstance(x, (TimeoutError, ConnectionError)):
            return True
        if isinstance(x, OSError) and x.errno in _TRANSIENT_ERRNOS:
            return True
        if any(code in str(x) for code in _TRANSIENT_CODES):
            return True
    return False


class Checkpointer:
    """A thin layer over ``ocp.CheckpointManager`` with the two items ``state`` and ``meta``."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = storage.absolute(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
            # Handlers named up front: item_metadata (check_fits) can then read a checkpoint
            # that this manager did not write.
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
                # the input pipeline's position, one file per process (streaming data only)
                "data": grain.checkpoint.CheckpointHandler(),
            },
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, force: bool = True, data: Any = None) -> None:
        """``data``: the input pipeline's position (``streaming.DataState``), saved beside.
        ``meta`` gets the checksums of ``state``'s arrays (``CHECKSUMS``), checked on restore."""
        meta = {**meta, CHECKSUMS: checksums(state)}
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data)
        self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def restore_data(self, step: int, target: Any) -> bool:
        """Restores the input pipeline position saved at ``step`` into ``target`` (a
        ``streaming.DataState``); False when the checkpoint holds none for this process."""
        if not (epath.Path(self.directory) / str(step) / "data").exists():
            return False
        read = functools.partial(
            self.manager.restore,
            step,
            args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(target)),
        )
        try:
            self._retrying(step, read)
        except ValueError as e:  # grain: no file for this process (another process count)
            log.warning("no input pipeline position in checkpoint %d for this process: %s", step, e)
            return False
        return True

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores ``step`` into the shapes, dtypes and shardings of ``abstract_state``;
        CheckpointDamaged when its arrays' checksums differ from those saved (checkpoints from
        before the checksums are not checked)."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        meta = dict(out.meta)
        saved = meta.pop(CHECKSUMS, None)
        if saved is not None and checksums(out.state) != list(saved):
            raise CheckpointDamaged(
                f"the arrays of the checkpoint at step {step} in {self.directory} read back other "
                "than they were saved (their checksums differ): its files are garbled"
            )
        return out.state, meta

    def read_meta(self, step: int) -> dict:
        """The JSON record saved beside the state of ``step`` (without the checksums)."""
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return {k: v for k, v in dict(out.meta).items() if k != CHECKSUMS}

    def check_fits(self, step: int, abstract_state: Any) -> None:
        """CheckpointMismatch unless the arrays stored at ``step`` have the shapes of
        ``abstract_state``'s (compared as multisets: independent of how orbax names the nodes of
        optimizer states). Reading the array metadata fails on a damaged checkpoint."""
        stored = jax.tree.leaves(self.manager.item_metadata(step).state)
        have = sorted(tuple(m.shape) for m in stored if getattr(m, "shape", None) is not None)
        want = sorted(tuple(x.shape) for x in jax.tree.leaves(abstract_state))
        if stored and len(have) == len(stored) and have != want:
            diff = sorted(set(have) ^ set(want))[:6]
            raise CheckpointMismatch(
                f"the checkpoint at step {step} in {self.directory} holds {len(have)} arrays "
                f"that do not fit the {len(want)} of the model and optimizer now configured "
                f"(shapes on one side only: {', '.join(map(str, diff)) or 'counts differ'})"
            )

    def _retrying(self, step: int, read: Callable[[], Any]) -> Any:
        """``read()``, tried again after each of ``RETRY_DELAYS`` while it fails for a passing
        reason (``is_transient``); then CheckpointUnreachable naming the path."""
        path = os.path.join(self.directory, str(step))
        for delay in (*RETRY_DELAYS, None):
            try:
                return read()
            except Exception as e:
                if not is_transient(e):
                    raise
                if delay is None:
                    raise CheckpointUnreachable(
                        f"cannot read the checkpoint {path} ({type(e).__name__}: {str(e)[:300]}), "
                        f"tried {len(RETRY_DELAYS) + 1} times; the storage looks unreachable. "
                        "The checkpoint is left as it is: run again once it can be read"
                    ) from e
                log.warning(
                    "reading %s failed (%s: %s); trying again in %.0f s",
                    path,
                    type(e).__name__,
                    str(e)[:200],
                    delay,
                )
                time.sleep(delay)

    def restore_latest_good(
        self, abstract_state: Any, check: Callable[[int, dict], None] | None = None
    ) -> tuple[int, Any, dict] | None:
        """The newest checkpoint that restores; a damaged one (its files cannot be read) is set
        aside with a warning and the previous one tried.

        ``check(step, meta)`` runs on the newest readable checkpoint's meta before its state is
        read; what it raises stops the restore (the config check of ``Trainer``). A checkpoint
        that does not fit ``abstract_state`` raises CheckpointMismatch; one that keeps failing
        for a passing reason raises CheckpointUnreachable. Neither is set aside.
        """
        for step in reversed(self.all_steps()):
            try:
                meta = self._retrying(step, functools.partial(self.read_meta, step))
                if check is not None:
                    check(step, meta)
                self._retrying(step, functools.partial(self.check_fits, step, abstract_state))
                read = functools.partial(self.restore, step, abstract_state)
                state, meta = self._retrying(step, read)
                return step, state, meta
            except (CheckpointMismatch, CheckpointUnreachable):
                raise
            except Exception as e:  # orbax raises many types for truncated/garbled files
                if any(m in str(e) for m in _MISMATCH_MESSAGES):
                    raise CheckpointMismatch(
                        f"the checkpoint at step {step} in {self.directory} does not fit the "
                        f"state now configured ({str(e)[:300]})"
                    ) from e
                log.warning(
                    "checkpoint at step %d is damaged (%s: %s); falling back to the previous one",
                    step,
                    type(e).__name__,
                    str(e)[:300],
                )
                self._set_aside(step)
        return None

    def _set_aside(self, step: int) -> None:
        """Moves a damaged step out of the way (kept for inspection), so training can write it
        again."""
        if jax.process_index() == 0:
            aside = self.directory + "_damaged"
            storage.move(
                storage.join(self.directory, str(step)),
                storage.join(aside, f"{step}-{int(time.time())}"),
            )
            log.warning("moved the damaged checkpoint of step %d to %s", step, aside)
        barrier(f"jaxformers-set-aside-{step}")
        self.manager.reload()

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs carrying shardings: the restore target for orbax."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


# Beside exported params: their arrays' checksums (``checksums``), checked by ``load_params``.
EXPORT_CHECKSUMS = "jaxformers_checksums.json"


def export_params(params: Any, directory: str) -> str:
    """Writes params only (for inference), synchronously, with their checksums. Returns the
    path."""
    path = storage.absolute(directory)
    sums = checksums(params)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, params, force=True)
    ckptr.wait_until_finished()
    if jax.process_index() == 0:
        storage.write_text(storage.join(path, EXPORT_CHECKSUMS), json.dumps(sums))
    return path


def load_params(directory: str, abstract: Any | None = None) -> Any:
    """Reads params written by ``export_params`` (onto one device unless ``abstract`` says
    otherwise)."""
    path = storage.absolute(directory)
    if not storage.isdir(path):
        raise FileNotFoundError(f"no exported params at {path}; train first (jaxformers train ...)")
    ckptr = ocp.StandardCheckpointer()
    if abstract is None:
        meta = ckptr.metadata(path)
        tree = getattr(meta, "item_metadata", meta)
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), tree
        )
    try:
        params = ckptr.restore(path, abstract)
    except Exception as e:
        raise ValueError(
            f"cannot read exported params at {path} ({type(e).__name__}: {str(e)[:200]}); "
            "the export is damaged, export it again"
        ) from e
    sums = storage.join(path, EXPORT_CHECKSUMS)  # exports from before it have none
    if storage.isfile(sums) and checksums(params) != json.loads(storage.read_text(sums)):
        raise ValueError(
            f"exported params at {path} read back other than they were written (their checksums "
            "differ): the export is damaged, export it again"
        )
    return params
