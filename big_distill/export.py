r"""The export command: a finished run's student in another layout of its family.

    python -m big_distill.export --workdir=DIR [--layout=NAME] [--out=FILE]

Reads DIR/config.json (the student's model module, its kwargs, the class
count and resolution) and DIR/student.npz (written when the run finished),
loads the weights into the model's variables through the family's `load`
(so a file that does not fit the config is refused here, not by whoever
reads the export) and writes them with the family's `save(..., layout=NAME)`
to FILE (default: DIR/student_<NAME>.npz). NAME is one of the family's
`LAYOUTS` (default: its first, the layout of student.npz itself); BiT's are
`bit` (BiT's release and timm's `resnetv2_*_bit`) and `big_vision`
(big_vision's `bit_paper.load`). The command knows no family: it uses only
the model contract (big_distill/models/__init__.py).
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
import jax.numpy as jnp
import ml_collections as mlc

from big_distill import errors
from big_distill import model_set
from big_distill import weights

CONFIG = "config.json"
STUDENT = "student.npz"


def read_run(workdir: str) -> mlc.ConfigDict:
  """The config of the finished run in `workdir`; errors say what is missing."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile: gs:// workdirs)
  gfile = tf.io.gfile
  if not gfile.isdir(workdir):
    raise errors.WorkdirError(f"--workdir={workdir} does not exist or is not a directory. "
                              "Give the workdir of a run (the trainer prints it: 'Workdir: ...').")
  path = os.path.join(workdir, CONFIG)
  if not gfile.exists(path):
    raise errors.WorkdirError(f"--workdir={workdir} has no {CONFIG}: it is not the workdir "
                              "of a run. Give the folder the trainer printed as 'Workdir: ...'.")
  if not gfile.exists(os.path.join(workdir, STUDENT)):
    raise errors.WorkdirError(
        f"--workdir={workdir} has no {STUDENT}: that run has not finished (student.npz is "
        "written at the end of training). Rerun its train command to resume it to the end, "
        "then export.")
  with gfile.GFile(path) as f:
    return mlc.ConfigDict(json.load(f))


def export(workdir: str, layout: str | None = None, out: str | None = None) -> tuple[str, str]:
  """Writes the run's student in `layout`; returns (the path written, the layout)."""
  config = read_run(workdir)
  module = model_set.model_module(config.student_name)
  layout = layout or module.LAYOUTS[0]
  if layout not in module.LAYOUTS:
    raise errors.ConfigError(
        f"--layout={layout}: the student's family ({config.student_name!r}) has no such "
        f"layout. Its layouts: {', '.join(module.LAYOUTS)}.")
  out = out or os.path.join(workdir, f"student_{layout}.npz")
  # float32: the file's dtype whatever the run computed in.
  model = model_set.get_model(config.student_name, config.student, config.num_classes,
                              jnp.float32)
  variables = weights.load_trained(config, "student", model, os.path.join(workdir, STUDENT),
                                   where=f"--workdir={workdir}: ")
  module.save(variables, out, layout=layout)
  return out, layout


def define_flags(values=None) -> None:
  """The command's flags (only when run as a command: importing defines none)."""
  values = values if values is not None else flags.FLAGS
  flags.DEFINE_string("workdir", None, "The workdir of a finished run (holding config.json "
                      "and student.npz).", flag_values=values)
  flags.DEFINE_string("layout", None, "One of the student family's layouts (BiT: bit, "
                      "big_vision); default: its first, student.npz's own.", flag_values=values)
  flags.DEFINE_string("out", None, "The .npz to write (default: "
                      "WORKDIR/student_<layout>.npz).", flag_values=values)


def main(argv):
  del argv
  f = flags.FLAGS
  if not f.workdir:
    raise app.UsageError("Give --workdir=DIR, the workdir of a finished run.")
  with errors.reported("big_distill.export"):
    path, layout = export(f.workdir, f.layout, f.out)
  print(f"Wrote {path} (the student of {f.workdir}, layout {layout}).", flush=True)


if __name__ == "__main__":
  define_flags()
  app.run(main)
