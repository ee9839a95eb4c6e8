"""Examples per second of the training input pipeline alone (no model, no devices).

    python -m big_distill.data.throughput --config=configs/flowers_r50.py:variant=fast \
        --config.input.batch_size=128 --num_batches=30

Any config module with `get_config()` works, and every config field can be set
from the command line. The figure counts examples (each one yields an image for
every model) per second on this host, after `--warmup` batches.
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
import ml_collections as mlc
from ml_collections import config_flags

from big_distill.data import datasets
from big_distill.data import input as input_lib

FLAGS = flags.FLAGS


def _define_flags():
  # Only when run as a command: big_distill.train defines --config too, and
  # importing both modules in one process must not clash.
  config_flags.DEFINE_config_file("config", None, "Config file (get_config).")
  flags.DEFINE_integer("num_batches", 30, "Batches to time.")
  flags.DEFINE_integer("warmup", 5, "Batches read before timing.")


def measure(config: mlc.ConfigDict, num_batches: int = 30, *, warmup: int = 5,
            decoded=None) -> float:
  """Returns this process's training examples per second (after `warmup` batches).

  `decoded`: the decoded set of `config.input.cache="decoded"`, if made already
  (decoding it is a one-off cost, not part of the rate).
  """
  it = input_lib.make_train_dataset(config, decoded=decoded).as_numpy_iterator()
  for _ in range(warmup):
    batch = next(it)
  start = time.perf_counter()
  for _ in range(num_batches):
    batch = next(it)
  seconds = time.perf_counter() - start
  return num_batches * len(batch["image"]["student"]) / seconds


def main(argv):
  del argv
  config = FLAGS.config
  datasets.check_prepared(config.input.data)
  rate = measure(config, FLAGS.num_batches, warmup=FLAGS.warmup)
  res = {n: config[f"{n}_res"] for n in input_lib.model_names(config)}
  print(f"{rate:.1f} examples/s  ({config.input.data.name} {config.input.data.split}, "
        f"batch {config.input.batch_size}, cache={config.input.cache}, "
        f"views={config.distill.views}, res={res},\n  pp={config.input.pp!r} "
        f"pp_random={config.input.pp_random!r} pp_post={config.input.pp_post!r})")


if __name__ == "__main__":
  _define_flags()
  flags.mark_flag_as_required("config")
  app.run(main)
