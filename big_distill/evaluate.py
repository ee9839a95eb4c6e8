r"""The evaluate command: a config's evaluators on any checkpoint, without training.

    python -m big_distill.evaluate --config=configs/flowers_r50.py --init=PATH \
        [--workdir=DIR]

PATH is a weights .npz (any layout the config's model module reads), a gs://
path, or the workdir of a run: its student.npz, else its newest orbax
checkpoint; without --init, the config's teachers alone. The config's
teachers are loaded as the trainer loads them. Prints one JSON line and
writes it to DIR/evaluate_<name of PATH>.json (DIR: the run's workdir when
PATH is one, else the config's default workdir). The metrics are the
trainer's (`big_distill.evaluators`).
"""

from __future__ import annotations

import json
import os
import re
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags
import tensorflow as tf

from big_distill import checkpoint as ckpt_lib
from big_distill import checks
from big_distill import config_lib
from big_distill import errors
from big_distill import feeding
from big_distill import fileio
from big_distill import model_set
from big_distill import plan
from big_distill import setup
from big_distill import weights


def _student_variables(config, s, init: str) -> tuple[object, str]:
  """(the student's variables on the mesh, where they came from)."""
  gfile = tf.io.gfile
  if not checks.readable(init, "init"):
    raise errors.CheckpointError(f"--init={init} does not exist. Give a weights .npz "
                                 "(local or gs://) or the workdir of a run.")
  source = init
  if gfile.isdir(init):
    exported = os.path.join(init, "student.npz")
    checkpoints = os.path.join(init, "checkpoints")
    if gfile.exists(exported):
      source = exported
    elif gfile.isdir(checkpoints) and gfile.listdir(checkpoints):
      ckpt = ckpt_lib.Checkpointer(checkpoints, keep=config.keep_ckpts,
                                   replica_parallel=config.ckpt_replica_parallel)
      try:
        restored = ckpt.restore(s.checkpoint_state)
      finally:
        ckpt.close()
      if restored is not None:
        step, tree = restored
        return setup.student_weights(setup.from_checkpoint(tree)), f"{checkpoints} step {step}"
    else:
      raise errors.CheckpointError(
          f"--init={init} is a directory with neither student.npz nor checkpoints/: "
          "give a weights .npz or the workdir of a run.")
  host = weights.load_trained(config, "student", s.models.student, source, where=f"--init={init}: ")
  return jax.tree.map(jax.device_put, host, s.state_sharding["variables"]), source


def teachers_only(config):
  """`config` with every evaluator restricted to the teachers (no distances)."""
  if not config.teachers:
    raise errors.ConfigError("This config has no teachers: give --init=PATH, the weights "
                             "to evaluate.")
  c = config.copy_and_resolve_references()
  with c.unlocked():
    for name in list(c.evals):
      if c.evals[name].type == "distance":
        del c.evals[name]
      else:
        c.evals[name].models = ",".join(config.teachers)
  return c


def evaluate_checkpoint(config, init: str | None) -> dict:
  """Runs every evaluator of `config` on the weights `init`, through the
  trainer's own set-up; returns {"init", "weights", "metrics"}.

  Without `init`, the config's teachers alone (e.g. to check a released
  teacher's accuracy, and which `stem_pool_pad` fits it).
  """
  if init is None:
    config = teachers_only(config)
  checks.check_config(config)
  models = model_set.build_models(config)
  checks.check_data(config)
  checks.check_inits(config, student=False)  # --init replaces config.student_init.
  mesh = plan.make_mesh(config)
  d = plan.durations(config)
  s = setup.build(config, models, mesh, total_steps=d.total, warmup_steps=d.warmup)
  teacher_params = weights.load_teachers(config, models, mesh)
  params, source = (None, "teachers only") if init is None else _student_variables(config, s, init)
  metrics = {}
  for e in feeding.make_evaluators(config, models, mesh):
    metrics.update(e.run(params, teacher_params))
  return {"init": init, "weights": source, "metrics": metrics}


def output_path(init: str | None, workdir: str) -> str:
  """`workdir/evaluate_<file-system-safe name of init>.json`."""
  name = os.path.basename(os.path.normpath(init)) if init else "teachers"
  return os.path.join(workdir, f"evaluate_{re.sub(r'[^A-Za-z0-9.-]+', '_', name)}.json")


def define_flags(values=None) -> None:
  """The command's flags (only when run as a command: importing defines none)."""
  values = values if values is not None else flags.FLAGS
  config_flags.DEFINE_config_file("config", None, "Config file whose evaluators run, e.g. "
                                  "configs/flowers_r50.py.", flag_values=values,
                                  lock_config=True)
  flags.DEFINE_string("init", None, "Weights to evaluate: an .npz (local or gs://) or a "
                      "run's workdir. Without it: the config's teachers alone.",
                      flag_values=values)
  flags.DEFINE_string("workdir", None, "Where the JSON goes (default: the run's workdir if "
                      "--init is one, else the config's default workdir).", flag_values=values)


def main(argv):
  del argv
  f = flags.FLAGS
  if not f["config"].present:
    raise app.UsageError("Give --config=configs/X.py[:args] [--init=PATH].")
  with errors.reported("big_distill.evaluate", ckpt_lib.CheckpointError):
    out = evaluate_checkpoint(f.config, f.init or None)  # The config file runs here.
  workdir = f.workdir
  if not workdir:
    is_run = f.init and tf.io.gfile.isdir(f.init)
    workdir = f.init if is_run else config_lib.default_workdir(
        config_flags.get_config_filename(f["config"]))
  tf.io.gfile.makedirs(workdir)
  path = output_path(f.init, workdir)
  with fileio.atomic_write(path) as file:
    json.dump(out, file, indent=2, sort_keys=True)
  print(json.dumps(out, sort_keys=True), flush=True)
  print(f"Wrote {path}.", file=sys.stderr)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=config_lib.flags_parser("big_distill.evaluate"))
