"""tests/tiny_config.py with a tiny MobileNet v3 Small student (CPU, seconds).

    --config=tests/tiny_mobilenet_config.py:data_dir=DIR,teacher=T.npz,norm=batch

`norm=batch` gives a student with batch statistics (BatchNorm), `norm=group`
the paper's GroupNorm. Every other argument is tiny_config's. The student is
MobileNet v3 Small at width 0.25 with `small_input` (16px images end as a 2x2
map), so its compile stays short.
"""

from tests import tiny_config


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  norm = "batch"
  rest = []
  for p in parts:
    if p.startswith("norm="):
      norm = p.split("=", 1)[1]
    else:
      rest.append(p)
  c = tiny_config.get_config(",".join(rest))
  c.student_name = "mobilenet_v3"
  c.student = dict(variant="small", width=0.25, norm=norm, small_input=True)
  return c


write_teacher = tiny_config.write_teacher
