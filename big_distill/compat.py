"""The one place where big_distill reaches past a library's public API.

Each entry says what it is for, why no public way exists, and the version it
was checked against; tests/test_compat.py fails loudly when the library
changes under it.

- `coordination_client()`: jax.distributed's key-value store. The lost-peer
  watchdog (parallel.py) must talk to the other processes without a device
  collective, which would block for ever on the very peer it looks for.
  jax exposes `jax.distributed.initialize/is_initialized/shutdown` but not the
  client that its coordination service gives each process. Checked against
  jax 0.10.2 (orbax-checkpoint 0.12.8 reads the same attribute).
"""

from __future__ import annotations

import jax

CHECKED_JAX_VERSION = "0.10.2"


def coordination_client():
  """This process's client of jax.distributed's coordination service.

  It offers `key_value_set(key, value, allow_overwrite=...)`,
  `key_value_dir_get(prefix)` and `blocking_key_value_get(key, timeout_ms)`.
  Raises RuntimeError when jax.distributed is not initialized or the client
  cannot be found (a jax other than the one checked).
  """
  if not jax.distributed.is_initialized():
    raise RuntimeError("jax.distributed is not initialized: there is no coordination service.")
  from jax._src import distributed  # pylint: disable=g-import-not-at-top  (see the module doc)
  client = getattr(getattr(distributed, "global_state", None), "client", None)
  if client is None:
    raise RuntimeError(
        f"jax {jax.__version__} keeps its coordination client elsewhere than jax "
        f"{CHECKED_JAX_VERSION} did (jax._src.distributed.global_state.client): update "
        "big_distill/compat.py.")
  return client
