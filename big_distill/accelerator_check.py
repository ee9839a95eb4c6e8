r"""The first thing to run on an accelerator: one table of what matters for speed.

    bash scripts/accelerator_check.sh [--out=DIR]     # one GPU or TPU host, <= 8 min
    bash scripts/accelerator_check.sh --dry_run       # the same code at tiny sizes, CPU

Prints, and writes as JSON to `--out` (default: the current folder):
  * the paper's ImageNet step (BiT R152x2 teachers -> R50x1 student, 224px,
    batch 256), the Flowers step (128px, batch 512) and a ViT-B/16 teacher ->
    R50x1 step (224px, batch 256), bfloat16: step time, images/s, FLOPs, MFU,
    peak device memory (`big_distill.benchmark`'s figures);
  * where TensorFlow is installed: the input's examples/s for every
    `config.input.cache` mode on this host's cores, for Flowers-sized images
    (1,020 random 500x375 JPEGs, made here as a TFDS data set, since no data
    set can be downloaded), and whether each would leave the Flowers step
    waiting (input-bound). Without TensorFlow (a lent accelerator may have
    none) this part is skipped, and one line says so.

The configs are read from this work tree's `configs/` by their path.

Every figure comes from `big_distill.benchmark` (the trainer's own step), so
the check cannot drift from what trains. With --dry_run the models are tiny
(R26x1/16 at 32px, the ImageNet step's second teacher at 48px, batch 16) and
it runs on a CPU in a minute: a test runs it, so the script cannot break
unnoticed before it meets an accelerator.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np

FLOWERS_TRAIN = 1020  # Flowers102's training images.
FLOWERS_HW = (375, 500)  # A typical Flowers102 image (the originals vary).


def define_flags() -> None:
  flags.DEFINE_bool("dry_run", False, "Tiny models and data on the CPU: checks the code path.")
  flags.DEFINE_string("out", ".", "Folder for accelerator_check.json.")
  flags.DEFINE_integer("steps", 10, "Timed steps per measurement.")


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _override(config, **fields):
  from big_distill import benchmark  # pylint: disable=g-import-not-at-top
  return benchmark.with_fields(config, **fields)


def _config(name: str, arg: str = ""):
  from big_distill import config_lib  # pylint: disable=g-import-not-at-top
  path = os.path.join(REPO, "configs", f"{name}.py")
  return config_lib.load_config(path + (f":{arg}" if arg else ""), lock=False)


def mock_flowers(root: str, n: int, hw: tuple[int, int], seed: int = 0) -> tuple[str, str]:
  """`n` random JPEGs of size `hw` in 102 classes, as the TFDS data set 'bd_mock_flowers'."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from big_distill.data import prepare  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  images = os.path.join(root, "images")
  for i in range(n):
    folder = os.path.join(images, "train", f"class{i % 102:03d}")
    os.makedirs(folder, exist_ok=True)
    # Smooth noise: JPEG sizes (and decode times) like photographs, not like static.
    small = rng.uniform(0, 255, (hw[0] // 25 + 1, hw[1] // 25 + 1, 3)).astype(np.float32)
    image = tf.image.resize(small, hw, "bicubic").numpy()
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    tf.io.write_file(os.path.join(folder, f"{i:04d}.jpg"), tf.io.encode_jpeg(image, quality=90))
  data_dir = os.path.join(root, "tfds")
  prepare.prepare_folder(images, "bd_mock_flowers", data_dir)
  return "bd_mock_flowers", data_dir


def _vit_teacher(config, vit: dict, res: int):
  """`config` with one ViT teacher (random weights in the benchmark) in place of its BiTs."""
  return _override(config, teachers=("t1",), t1_name="vit", t1=vit, t1_res=res,
                   t1_init="unused: the benchmark's teachers are random")


def step_configs(dry_run: bool) -> dict[str, Any]:
  """The steps of the table, as the paper's configs define them."""
  if dry_run:
    tiny = {"student.depth": 26, "student.width": 0.0625, "t1.depth": 26, "t1.width": 0.0625,
            "student_res": 32, "t1_res": 32, "compute_dtype": "bfloat16",
            "input.batch_size": 16,
            # As the paper's teachers (and the real check's): big_vision's stem pool.
            "t1.stem_pool_pad": "neg_inf"}
    # The ImageNet step's second teacher (384px in the paper) stays a second
    # teacher at its own resolution, tiny too (runlocal's would be R26x1/4 at
    # 96px: most of the dry run's step time).
    imagenet = _override(_config("imagenet_r50", "runlocal"), **tiny,
                         **{"t2.depth": 26, "t2.width": 0.0625, "t2_res": 48,
                            "t2.stem_pool_pad": "neg_inf"})
    tiny_vit = dict(patch_size=8, width=32, depth=2, mlp_dim=64, num_heads=2, pool_type="tok")
    return {
        "imagenet R152x2->R50x1 224px b256 (dry run: tiny)": imagenet,
        "flowers R152x2->R50x1 128px b512 (dry run: tiny)": _override(
            _config("flowers_r50", "runlocal"), **tiny),
        "imagenet ViT-B/16->R50x1 224px b256 (dry run: tiny)": _vit_teacher(
            imagenet, tiny_vit, 32),
    }
  imagenet = _override(_config("imagenet_r50"), compute_dtype="bfloat16",
                       **{"input.batch_size": 256})
  return {
      "imagenet R152x2->R50x1 224px b256": imagenet,
      "flowers R152x2->R50x1 128px b512": _override(
          _config("flowers_r50", "variant=fast"), compute_dtype="bfloat16",
          **{"input.batch_size": 512}),
      "imagenet ViT-B/16->R50x1 224px b256": _vit_teacher(
          imagenet, dict(variant="B/16", pool_type="tok"), 224),
  }


def run(dry_run: bool, steps: int, workdir: str) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  from big_distill import benchmark  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  device = jax.devices()[0]
  out: dict[str, Any] = {"device_kind": device.device_kind, "platform": device.platform,
                         "device_count": jax.device_count(), "host_cores": os.cpu_count(),
                         "dry_run": dry_run, "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                    time.gmtime())}
  warmup = 1 if dry_run else 2
  # The dry run measures the CPU's peak (the MFU column) on a small matmul: its
  # numbers mean nothing, and 2048x2048 in bfloat16 costs seconds here. On an
  # accelerator the peak comes from costs.PEAKS, not from a matmul.
  cpu_matmul_size = 256 if dry_run else None
  out["steps"] = {}
  for name, config in step_configs(dry_run).items():
    r = benchmark.run_train(config, steps=steps, warmup=warmup, cpu_matmul_size=cpu_matmul_size)
    out["steps"][name] = {k: r.get(k) for k in (
        "global_batch", "compile_s", "step_time_s", "window_step_time_s", "images_per_s",
        "flops_per_step", "flops", "mfu", "peak_source", "peak_device_memory_bytes",
        "host_peak_rss_bytes", "recompiles_after_first_call")}
    print(f"  {name}: {r['step_time_s'] * 1e3:.1f} ms/step, {r['images_per_s']:.0f} img/s, "
          f"MFU {_pct(r['mfu'])}", file=sys.stderr, flush=True)
  flowers_name = next(n for n in out["steps"] if n.startswith("flowers"))
  demand = out["steps"][flowers_name]["images_per_s"]
  missing = benchmark.input_pipeline_missing()
  if missing:
    out["input"] = {"skipped": f"no TensorFlow here ({missing}): the input pipeline "
                               "(tf.data) cannot run; measure it on a host with TensorFlow "
                               "(python -m big_distill.benchmark --input)",
                    "flowers_step_demand_images_per_s": demand}
    print(f"  input pipeline: skipped ({missing})", file=sys.stderr, flush=True)
  else:
    n, hw = (24, (60, 80)) if dry_run else (FLOWERS_TRAIN, FLOWERS_HW)
    data_name, data_dir = mock_flowers(workdir, n, hw)
    config = step_configs(dry_run)[flowers_name]
    config = _override(config, **{"input.data.name": data_name, "input.data.split": "train",
                                  "input.data.data_dir": data_dir,
                                  "input.data.balanced_subset": None,
                                  "input.batch_size": 16 if dry_run else 512})
    r = benchmark.run_input(config, steps=3 if dry_run else 10, warmup=1, demand=demand)
    out["input"] = {"images": f"{n} random JPEGs of {hw[1]}x{hw[0]}", "modes": r["cache_modes"],
                    "flowers_step_demand_images_per_s": demand,
                    "input_bound": r["input_bound"]}
  out["wall_s"] = time.perf_counter() - start
  return out


def _pct(x):
  return "-" if x is None else f"{100 * x:.1f}%"


def table(out: dict[str, Any]) -> str:
  """The results as one plain-text table."""
  lines = [f"device: {out['device_kind']} x{out['device_count']} ({out['platform']}), "
           f"host cores: {out['host_cores']}, {out['date']}"
           + (" -- DRY RUN (tiny sizes, numbers mean nothing)" if out["dry_run"] else ""),
           "", f"{'step':<48} {'ms/step':>9} {'img/s':>9} {'TFLOP/step':>11} {'MFU':>7} "
           f"{'peak mem GiB':>13}"]
  for name, r in out["steps"].items():
    mem = r["peak_device_memory_bytes"]
    lines.append(f"{name:<48} {r['step_time_s'] * 1e3:>9.1f} {r['images_per_s']:>9.0f} "
                 f"{r['flops_per_step'] / 1e12:>11.3f} {_pct(r['mfu']):>7} "
                 f"{'-' if mem is None else f'{mem / 2**30:.1f}':>13}")
  demand = out["input"]["flowers_step_demand_images_per_s"]
  if "skipped" in out["input"]:
    lines += ["", f"input: skipped. {out['input']['skipped']} (the Flowers step consumes "
              f"{demand:.0f} img/s)", f"\nwall time {out['wall_s']:.0f} s"]
    return "\n".join(lines)
  lines += ["", f"input ({out['input']['images']}; the Flowers step consumes {demand:.0f} img/s)",
            f"{'cache mode':<12} {'img/s':>9} {'per core':>9}  input-bound?"]
  for mode, r in out["input"]["modes"].items():
    if "error" in r:
      lines.append(f"{mode:<12} {'-':>9} {'-':>9}  not run: {r['error'][:60]}")
      continue
    per_core = r.get("examples_per_s_per_core")
    note = " (made on the device: no host work)" if mode == "device" else ""
    lines.append(f"{mode:<12} {r['examples_per_s']:>9.0f} "
                 f"{'-' if per_core is None else f'{per_core:.0f}':>9}  "
                 f"{'YES' if out['input']['input_bound'][mode] else 'no'}{note}")
  lines.append(f"\nwall time {out['wall_s']:.0f} s")
  return "\n".join(lines)


def main(argv):
  del argv
  f = flags.FLAGS
  with tempfile.TemporaryDirectory() as workdir:
    out = run(f.dry_run, 2 if f.dry_run else f.steps, workdir)
  os.makedirs(f.out, exist_ok=True)
  path = os.path.join(f.out, "accelerator_check.json")
  with open(path, "w") as fh:
    json.dump(out, fh, indent=2, sort_keys=True)
  print(table(out))
  print(f"(JSON: {path})")


if __name__ == "__main__":
  define_flags()
  app.run(main)
