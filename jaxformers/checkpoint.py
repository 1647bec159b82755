"""Checkpoints through orbax: the training state with auto-resume, and params-only exports.

A workdir holds ``checkpoints/<step>/{state,meta}``: ``state`` is the sharded pytree
``{"step", "params", "opt_state"}`` written asynchronously (training goes on while it is written),
``meta`` a small JSON record (data position, config fingerprint). Restoring uses an abstract
target that carries the shardings of the *current* mesh, so a checkpoint saved on one mesh
restores onto another.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxformers.launch import barrier

log = logging.getLogger("jaxformers")


class Checkpointer:
    """A thin layer over ``ocp.CheckpointManager`` with the two items ``state`` and ``meta``."""

    def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=async_save
            ),
            item_names=("state", "meta"),
        )

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict, force: bool = True) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
            force=force,
        )

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores ``step`` into the shapes, dtypes and shardings of ``abstract_state``."""
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
            ),
        )
        return out.state, dict(out.meta)

    def restore_latest_good(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """The newest checkpoint that restores; a damaged one is skipped with a warning."""
        for step in reversed(self.all_steps()):
            try:
                state, meta = self.restore(step, abstract_state)
                return step, state, meta
            except Exception as e:  # orbax raises many types for truncated/garbled files
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
            os.makedirs(aside, exist_ok=True)
            os.replace(
                os.path.join(self.directory, str(step)),
                os.path.join(aside, f"{step}-{int(time.time())}"),
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


def export_params(params: Any, directory: str) -> str:
    """Writes params only (for inference), synchronously. Returns the path."""
    path = os.path.abspath(directory)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path, params, force=True)
    ckptr.wait_until_finished()
    return path


def load_params(directory: str, abstract: Any | None = None) -> Any:
    """Reads params written by ``export_params`` (onto one device unless ``abstract`` says
    otherwise)."""
    path = os.path.abspath(directory)
    if not os.path.isdir(path):
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
        return ckptr.restore(path, abstract)
    except Exception as e:
        raise ValueError(
            f"cannot read exported params at {path} ({type(e).__name__}: {str(e)[:200]}); "
            "the export is damaged, export it again"
        ) from e
