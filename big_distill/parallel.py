"""Devices, meshes and shardings: every array's placement is decided here.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (the batch is
split over it too, and large parameters are sharded over it, which is what lets
an R152x4 teacher fit). Batches are always sharded over both axes.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts jax.distributed when this is one process of several.

  Explicit arguments win. Otherwise JAX's own detection is used where a
  cluster announces itself (TPU pod workers, SLURM jobs of several tasks, or
  JAX_COORDINATOR_ADDRESS), and a single process on one machine starts none.
  """
  if coordinator_address or (num_processes or 0) > 1:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
  elif _in_cluster():
    jax.distributed.initialize()
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices.",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def _in_cluster() -> bool:
  env = os.environ
  if env.get("JAX_COORDINATOR_ADDRESS"):
    return True
  if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_STEP_ID" in env:
    return True
  hosts = env.get("TPU_WORKER_HOSTNAMES") or env.get("TPU_HOSTNAMES") or ""
  return len([h for h in hosts.split(",") if h]) > 1


def make_mesh(mesh_config) -> Mesh:
  """A ('data', 'fsdp') mesh over all devices; -1 takes the devices left."""
  n = jax.device_count()
  data, fsdp = int(mesh_config.data), int(mesh_config.fsdp)
  if fsdp == -1 and data == -1:
    raise ValueError("config.mesh: at most one of data and fsdp may be -1.")
  if fsdp == -1:
    fsdp = n // data if data > 0 and n % data == 0 else 0
  if data == -1:
    data = n // fsdp if fsdp > 0 and n % fsdp == 0 else 0
  if data * fsdp != n:
    raise ValueError(
        f"config.mesh data={mesh_config.data} x fsdp={mesh_config.fsdp} does not "
        f"fit the {n} devices. Choose sizes whose product is {n} (-1 fills in).")
  # Auto axes: XLA propagates shardings through the model from the explicit
  # ones we give the inputs, parameters and outputs.
  return jax.make_mesh((data, fsdp), ("data", "fsdp"),
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "config.input.batch_size") -> int:
  """Returns the per-process batch size, or explains why there is none."""
  n = mesh.devices.size
  if batch_size % n:
    raise ValueError(
        f"{what}={batch_size} is not divisible by the {n} devices of the mesh "
        f"{dict(mesh.shape)}. Use a multiple of {n}, e.g. "
        f"{max(n, batch_size // n * n)}.")
  return batch_size // jax.process_count()


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape, fsdp_size: int, min_size: int) -> P:
  """Shards the largest axis divisible by the fsdp size, for large arrays."""
  if fsdp_size <= 1 or int(np.prod(shape)) < min_size:
    return P()
  for axis in np.argsort(shape)[::-1]:
    if shape[axis] % fsdp_size == 0:
      spec = [None] * len(shape)
      spec[axis] = "fsdp"
      return P(*spec)
  return P()


def param_shardings(mesh: Mesh, abstract_tree: Any, min_size: int) -> Any:
  """NamedShardings for a tree of arrays (or ShapeDtypeStructs)."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(x.shape, fsdp, min_size)), abstract_tree)


def to_host(tree: Any, mesh: Mesh) -> Any:
  """The whole of every array as numpy, on every process.

  Arrays sharded across processes (fsdp over hosts) are not addressable from
  one process: they are first gathered (replicated) over the mesh. Call it on
  every process (it is a collective), then let process 0 write.
  """
  gathered = jax.jit(lambda t: t, out_shardings=replicated(mesh))(tree)
  return jax.device_get(gathered)
