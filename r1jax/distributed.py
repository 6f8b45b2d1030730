"""Multi-process runs: start jax.distributed from the launch environment, and say which process writes what.

JAX is multi-controller: one Python process per host (TPU VM, GPU node, or one
per GPU under SLURM) runs the same program; jitted steps see every device of
every process through one mesh. Call `initialize()` first thing, before any
other jax call (the experiment entry points do); it reads the environment:

  R1JAX_DISTRIBUTED=0              stay single-process, whatever else is set.
  R1JAX_COORDINATOR=host:port      explicit launch, with R1JAX_NUM_PROCESSES and
    (or JAX_COORDINATOR_ADDRESS)   R1JAX_PROCESS_ID (or JAX_NUM_PROCESSES, JAX_PROCESS_ID);
                                   the process with id 0 runs the coordinator on host.
  SLURM (srun, SLURM_NTASKS > 1), Open MPI (mpirun, OMPI_COMM_WORLD_SIZE > 1),
  Cloud TPU (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES / MEGASCALE_COORDINATOR_ADDRESS
  set, or libtpu and TPU chips present): jax.distributed.initialize() with no
  arguments, which reads the cluster's own variables (TPU: the metadata server).
  R1JAX_DISTRIBUTED=1              the same no-argument call anywhere (Kubernetes, mpi4py).
  none of these                    a no-op: one process, its local devices.

Who writes what:
  orbax checkpoints   every process calls save/restore with the same step and pytree: orbax
                      writes each process's shards, process 0 the metadata (checkpoint.py).
  metrics JSONL, TensorBoard, plots, progress bars, sample dumps, console summaries:
                      process 0 only (`is_main_process()`; metrics.MetricsWriter defaults to it).
  batches             each process loads its rows (`local_rows(global_rows, mesh)`) and
                      sharding.shard_batch(rows, mesh, process_local=True) assembles the global
                      batch with jax.make_array_from_process_local_data.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
from collections.abc import Mapping

import jax

from r1jax import sharding

EXPLICIT = (("R1JAX_COORDINATOR", "JAX_COORDINATOR_ADDRESS"), ("R1JAX_NUM_PROCESSES", "JAX_NUM_PROCESSES"),
            ("R1JAX_PROCESS_ID", "JAX_PROCESS_ID"))


@dataclasses.dataclass(frozen=True)
class Launch:
    """How this process was launched: `kind` is 'single', 'explicit', 'slurm', 'mpi', 'tpu' or 'forced'."""

    kind: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def distributed(self) -> bool:
        return self.kind != "single"


def _first(env: Mapping[str, str], names: tuple[str, ...]) -> tuple[str | None, str | None]:
    """(value, name) of the first of `names` set (non-empty) in env."""
    for name in names:
        if env.get(name, "").strip():
            return env[name].strip(), name
    return None, None


def _int(env: Mapping[str, str], names: tuple[str, ...], what: str) -> int | None:
    value, name = _first(env, names)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} must be an integer ({what})") from None


def _on_tpu_vm(env: Mapping[str, str]) -> bool:
    """Cloud TPU: the pod variables, or libtpu installed and TPU chips visible (what jax itself checks)."""
    hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    chips = glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*")
    return bool(chips) and importlib.util.find_spec("libtpu") is not None


def detect(env: Mapping[str, str] | None = None) -> Launch:
    """The launch described by `env` (default os.environ); starts nothing. ValueError naming a bad variable."""
    env = os.environ if env is None else env
    switch = env.get("R1JAX_DISTRIBUTED", "").strip().lower()
    if switch not in ("", "0", "1", "false", "true"):
        raise ValueError(f"R1JAX_DISTRIBUTED={env['R1JAX_DISTRIBUTED']!r} must be 0 or 1 (or unset: detect)")
    if switch in ("0", "false"):
        return Launch("single")
    coordinator, coordinator_var = _first(env, EXPLICIT[0])
    num_processes = _int(env, EXPLICIT[1], "how many processes")
    process_id = _int(env, EXPLICIT[2], "this process's index")
    if coordinator is not None:
        if ":" not in coordinator:
            raise ValueError(f"{coordinator_var}={coordinator!r} must be host:port")
        if num_processes is None or process_id is None:
            raise ValueError(f"{coordinator_var} is set: also set R1JAX_NUM_PROCESSES and R1JAX_PROCESS_ID")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"R1JAX_PROCESS_ID={process_id} must be in [0, R1JAX_NUM_PROCESSES={num_processes})")
        return Launch("explicit", coordinator, num_processes, process_id)
    if num_processes is not None or process_id is not None:
        raise ValueError("R1JAX_NUM_PROCESSES / R1JAX_PROCESS_ID need R1JAX_COORDINATOR=host:port")
    if all(v in env for v in ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")) and \
            _int(env, ("SLURM_NTASKS",), "SLURM task count") not in (None, 0, 1):
        return Launch("slurm")
    if "OMPI_MCA_orte_hnp_uri" in env and _int(env, ("OMPI_COMM_WORLD_SIZE",), "MPI world size") not in (None, 1):
        return Launch("mpi")
    if switch in ("1", "true"):
        return Launch("forced")
    if _on_tpu_vm(env):
        return Launch("tpu")
    return Launch("single")


def initialize(env: Mapping[str, str] | None = None, initialization_timeout: int = 300) -> Launch:
    """Start jax.distributed as `detect(env)` says (idempotent; a no-op single-process); returns the launch."""
    launch = detect(env)
    if not launch.distributed or jax.distributed.is_initialized():
        return launch
    if launch.kind == "explicit":
        jax.distributed.initialize(launch.coordinator, launch.num_processes, launch.process_id,
                                   initialization_timeout=initialization_timeout)
    else:
        jax.distributed.initialize(initialization_timeout=initialization_timeout)
    return launch


def is_main_process() -> bool:
    """Process 0: the one that writes metrics, TensorBoard, plots and console output."""
    return jax.process_index() == 0


def local_rows(global_rows: int, mesh: jax.sharding.Mesh) -> slice:
    """The rows of a global batch that this process feeds to sharding.shard_batch(..., process_local=True).

    They are the rows its devices hold under the batch sharding of `mesh` (one contiguous
    block per process); ValueError if the batch does not split evenly over the processes.
    """
    indices = sharding.batch_sharding((global_rows,), mesh).addressable_devices_indices_map((global_rows,))
    blocks = [index[0].indices(global_rows)[:2] for index in indices.values()]
    start, stop = min(b[0] for b in blocks), max(b[1] for b in blocks)
    if (stop - start) * jax.process_count() != global_rows:
        raise ValueError(f"a global batch of {global_rows} rows does not split evenly over "
                         f"{jax.process_count()} processes on mesh {dict(mesh.shape)}")
    return slice(start, stop)


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (e.g. after process 0 wrote a file others read)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)
