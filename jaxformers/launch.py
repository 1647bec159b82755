"""Multi-host start-up through JAX's own runtime (``jax.distributed.initialize``).

- TPU VM pod slices, SLURM and Open MPI: ``jax.distributed.initialize()`` finds the coordinator,
  the process count and this process's id by itself; run the same command on every host.
- Anything else (a GPU cluster without a scheduler, two processes on one machine in the tests):
  pass ``--coordinator HOST:PORT --num-processes N --process-id I`` or set
  ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``.

Call ``initialize`` before anything touches a device.
"""

from __future__ import annotations

import os

import jax
from jax.experimental import multihost_utils

from jaxformers import perf

_done = False


def _cluster_detected() -> bool:
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return True
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return len([h for h in hosts.split(",") if h]) > 1


def initialize(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Starts the multi-process runtime when this is a multi-host run; returns whether it did.
    Also sets the accelerator's XLA flags (``perf.apply_xla_flags``), which must precede the
    backends' start as this does."""
    global _done
    perf.apply_xla_flags()
    if _done:
        return True
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num_processes = num_processes or (
        int(os.environ["JAX_NUM_PROCESSES"]) if "JAX_NUM_PROCESSES" in os.environ else None
    )
    if process_id is None and "JAX_PROCESS_ID" in os.environ:
        process_id = int(os.environ["JAX_PROCESS_ID"])
    explicit = coordinator is not None and num_processes is not None and num_processes > 1
    if not explicit and not _cluster_detected():
        return False
    if os.environ.get("JAX_PLATFORMS", "").startswith("cpu"):
        # CPU processes need a collectives backend to talk to each other (tests, CPU clusters).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if explicit:
        if process_id is None:
            raise ValueError(
                "a multi-process run needs --process-id (or JAX_PROCESS_ID) besides the coordinator"
            )
        jax.distributed.initialize(
            coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
        )
    else:
        jax.distributed.initialize()
    _done = True
    return True


def barrier(name: str) -> None:
    """All processes wait here (a no-op on one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
