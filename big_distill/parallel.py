"""Devices, meshes and shardings: every array's placement is decided here.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (the batch is
split over it too, and large parameters are sharded over it, which is what lets
an R152x4 teacher fit). Batches are always sharded over both axes.

A multi-process job whose process dies must not leave the others blocked in a
collective for ever, holding their accelerators. Every process beats a
heartbeat through jax.distributed's coordination service, and a watchdog
thread stops this process when a peer has not beaten for the peer timeout
(env BIG_DISTILL_PEER_TIMEOUT_S, default 90 s), with a message naming the
lost process, exit code LOST_PROCESS_EXIT_CODE. If process 0 (the
coordinator) dies, JAX's own client stops the others at once (it can no
longer reach the service): exit code 134 (abort), "Terminating process
because the JAX distributed service detected fatal errors".
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import threading
import time
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from big_distill import compat

BATCH_AXES = ("data", "fsdp")

PEER_TIMEOUT_ENV = "BIG_DISTILL_PEER_TIMEOUT_S"
DEFAULT_PEER_TIMEOUT_S = 90.0
# sysexits.h's EX_TEMPFAIL: nothing is wrong with the run; rerun all processes.
LOST_PROCESS_EXIT_CODE = 75
_KV = "big_distill/peers"


def peer_timeout_s() -> float:
  """Seconds without a heartbeat after which a peer process counts as lost."""
  text = os.environ.get(PEER_TIMEOUT_ENV, "")
  if not text:
    return DEFAULT_PEER_TIMEOUT_S
  try:
    value = float(text)
  except ValueError:
    value = -1.0
  if not value > 0:
    from big_distill.errors import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError(f"{PEER_TIMEOUT_ENV}={text!r}: must be a number of seconds > 0 "
                      f"(default {DEFAULT_PEER_TIMEOUT_S:.0f}).")
  return value


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           peer_timeout: float | None = None) -> None:
  """Starts jax.distributed when this is one process of several.

  Explicit arguments win. Otherwise JAX's own detection is used where a
  cluster announces itself (TPU pod workers, SLURM jobs of several tasks, or
  JAX_COORDINATOR_ADDRESS), and a single process on one machine starts none.
  With several processes, a watchdog stops this one when a peer is lost.
  """
  timeout = peer_timeout or peer_timeout_s()
  # JAX's heartbeat is the backstop (it aborts without naming a cause in our
  # terms), so it waits longer than our watchdog.
  kwargs = dict(heartbeat_timeout_seconds=int(timeout) + 30)
  if coordinator_address or (num_processes or 0) > 1:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id, **kwargs)
  elif _in_cluster():
    jax.distributed.initialize(**kwargs)
  else:
    return
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices.",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  if jax.process_count() > 1:
    _Watchdog.start(compat.coordination_client(), jax.process_index(),
                    jax.process_count(), timeout)


def finished() -> None:
  """Tells the other processes that this one ended normally (not lost)."""
  if _Watchdog.current is not None:
    _Watchdog.current.finish()


def stop_if_a_peer_is_lost() -> None:
  """Called when this process failed: a failure caused by a lost peer exits as that.

  A peer that dies can make this process's collective fail before the watchdog's
  timeout has passed. Then the failure is the lost peer's, not a bug here: wait
  (at most the peer timeout) for the watchdog to see every peer alive, done or
  exited, and return so that the failure shows as itself; a peer that stays
  silent stops this process with the lost-process message and exit code.
  """
  if _Watchdog.current is not None:
    _Watchdog.current.wait_for_peers()


def heartbeat_period(timeout: float) -> float:
  """Seconds between heartbeats (and checks of the peers') for a peer timeout."""
  return min(5.0, timeout / 5)


class _Watchdog:
  """Heartbeats through the coordination service; stops the process on a lost peer.

  A peer is lost when its heartbeat counter has not changed for `timeout`
  seconds of this host's clock (no clock skew between hosts matters), unless it
  said it finished. The message tells which process, on which host, and to
  rerun: every process restarts from the last complete checkpoint.
  """

  current: "_Watchdog | None" = None

  def __init__(self, client, index: int, count: int, timeout: float):
    self.client, self.index, self.count, self.timeout = client, index, count, timeout
    self.period = heartbeat_period(timeout)
    self._stop = threading.Event()
    self._beats = 0

  @classmethod
  def start(cls, client, index, count, timeout) -> None:
    self = cls(client, index, count, timeout)
    client.key_value_set(f"{_KV}/{index}/info", json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid()}), allow_overwrite=True)
    self._beat()
    cls.current = self
    # Before jax's own exit handlers: a process that crashed stops beating at
    # once, so the others see it gone instead of waiting on it.
    atexit.register(self._on_exit)
    threading.Thread(target=self._run, daemon=True, name="big_distill.watchdog").start()

  def _beat(self) -> None:
    self._beats += 1
    self.client.key_value_set(f"{_KV}/{self.index}/beat", str(self._beats),
                              allow_overwrite=True)

  def finish(self) -> None:
    self._stop.set()
    try:
      self.client.key_value_set(f"{_KV}/{self.index}/done", "1", allow_overwrite=True)
    except Exception:  # pylint: disable=broad-except  (the service may be gone)
      pass

  def wait_for_peers(self) -> None:
    """Returns once each peer has beaten since the call (or said it is done or
    exited); a lost peer is the watchdog thread's to report, which ends the process."""
    deadline = time.monotonic() + self.timeout + 3 * self.period
    first = None
    while time.monotonic() < deadline and not self._stop.is_set():
      try:
        entries = dict(self.client.key_value_dir_get(_KV))
      except Exception:  # pylint: disable=broad-except  (the watchdog thread reports it)
        entries = None
      if entries is not None:
        first = entries if first is None else first
        if all(peer == self.index or entries.get(f"{_KV}/{peer}/done")
               or entries.get(f"{_KV}/{peer}/exited")
               or entries.get(f"{_KV}/{peer}/beat") != first.get(f"{_KV}/{peer}/beat")
               for peer in range(self.count)):
          return
      time.sleep(self.period / 2)

  def _on_exit(self) -> None:
    if not self._stop.is_set():
      self._stop.set()
      try:
        self.client.key_value_set(f"{_KV}/{self.index}/exited", "1", allow_overwrite=True)
      except Exception:  # pylint: disable=broad-except
        pass

  def _run(self) -> None:
    seen: dict[int, tuple[str, float]] = {}
    start = time.monotonic()
    while not self._stop.wait(self.period):
      try:
        self._beat()
        entries = dict(self.client.key_value_dir_get(_KV))
      except Exception as e:  # pylint: disable=broad-except
        if self._stop.is_set():
          return
        self._lost(0, {}, f"the coordination service on process 0 cannot be reached ({e})")
        return
      now = time.monotonic()
      for peer in range(self.count):
        if peer == self.index or entries.get(f"{_KV}/{peer}/done"):
          continue
        beat = entries.get(f"{_KV}/{peer}/beat", "")
        if peer not in seen or seen[peer][0] != beat:
          seen[peer] = (beat, now)
        silent = now - (seen[peer][1] if beat else start)
        if silent > self.timeout and not self._stop.is_set():
          info = json.loads(entries.get(f"{_KV}/{peer}/info", "{}"))
          why = ("it exited before the run finished" if entries.get(f"{_KV}/{peer}/exited")
                 else "killed, preempted, out of memory or hung")
          self._lost(peer, info, f"no heartbeat for {silent:.0f} s: {why}")
          return

  def _lost(self, peer: int, info: dict, why: str) -> None:
    where = f" (pid {info['pid']} on host {info['host']})" if info else ""
    msg = (f"Lost process {peer} of {self.count}{where}: {why}. This process "
           f"({self.index}) stops too rather than wait in a collective for ever. Rerun "
           f"all {self.count} processes with the same command: the run resumes from "
           f"its last complete checkpoint. (Peer timeout: {self.timeout:.0f} s, "
           f"{PEER_TIMEOUT_ENV}.)")
    logging.error("%s", msg)
    print(f"big_distill.train: error: {msg}", file=sys.stderr, flush=True)
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:  # pylint: disable=broad-except
        pass
    os._exit(LOST_PROCESS_EXIT_CODE)  # pylint: disable=protected-access


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
