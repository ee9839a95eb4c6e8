"""ViT, exactly as big_vision's `models/vit.py` defines it, and its checkpoints.

Dosovitskiy et al., "An Image is Worth 16x16 Words": non-overlapping patches
embedded by a strided conv (`embedding`), a position embedding added
(`pos_embedding`, learned, or fixed 2-d sin-cos), optionally a class token
(`cls`) put in front, and a stack of pre-LayerNorm encoder blocks:

  x = x + MHA(LN(x));  x = x + Dense(gelu(Dense(LN(x))))

then a final LayerNorm (`Transformer/encoder_norm`), a pooling (`pool_type`:
"gap" the mean of the tokens, "tok" the class token, "0" the first token
without a class token, "map" multi-head attention pooling with a learned
probe, `MAPHead_0`), an optional `pre_logits` Dense + tanh (`rep_size`) and
the classifier `head`. Numerics as big_vision's (flax defaults): LayerNorm
eps 1e-6, gelu with its tanh approximation, attention logits scaled by
1/sqrt(head dim). Parameter names are big_vision's, so its `.npz` files load
as they are, and `save` writes files big_vision's `vit.load` reads.

This model has no dropout (big_vision's `dropout` kwarg): the model contract
forbids random numbers in `apply`, and distillation's teachers and students
do not use it. `train` is accepted for the contract and changes nothing.
Inputs are in [-1, 1], what every big_vision ViT takes, the DeiT-3 files
included (big_vision converted their first layer). Computation runs in
`dtype` with float32 parameters; softmaxes run in float32; the pooled
features, `pre_logits` and the head run in float32, so logits are float32.

`scan=True` stacks the blocks under `Transformer/encoderblock` with a leading
depth axis (big_vision's scan layout; `load` reads either layout into either
model); `remat=True` recomputes each block's activations in the backward
pass (students).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
import re
from typing import Any, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from big_distill import errors
from big_distill import fileio

LAYOUTS = ("big_vision",)
HEAD_MISMATCH = ("reinit", "error")
POSEMBS = ("learn", "sincos2d")
POOL_TYPES = ("gap", "tok", "map", "0")

# big_vision's variant table (models/vit.py `decode_variant`; Table 2 of
# arXiv:2106.04560, So400m from arXiv:2305.13035, g-opt from SigLIP 2):
# name -> (width, depth, mlp_dim, num_heads).
VARIANTS = {
    "mu": (32, 1, 128, 2), "Ti": (192, 12, 768, 3), "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8), "B": (768, 12, 3072, 12), "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16), "H": (1280, 32, 5120, 16), "g": (1408, 40, 6144, 16),
    "g-opt": (1536, 40, 6144, 16), "G": (1664, 48, 8192, 16), "G-opt": (1536, 48, 8192, 16),
    "e": (1792, 56, 15360, 16),
}


def decode_variant(variant: Optional[str]) -> dict[str, Any]:
  """"B/16" -> width, depth, mlp_dim, num_heads and patch_size; "B" -> no patch size."""
  if variant is None:
    return {}
  name, _, patch = variant.partition("/")
  if name not in VARIANTS or (patch and not patch.isdigit()):
    raise errors.ConfigError(
        f"ViT variant={variant!r}: must be a size of {sorted(VARIANTS)}, optionally with "
        "a patch size (e.g. 'B/16', 'So400m/14'), or None with the sizes given.")
  out = dict(zip(("width", "depth", "mlp_dim", "num_heads"), VARIANTS[name]))
  if patch:
    out["patch_size"] = (int(patch), int(patch))
  return out


def posemb_sincos_2d(h: int, w: int, width: int, temperature: float = 10_000.):
  """Fixed 2-d position embedding (1, h*w, width): sin/cos of x, then of y (MoCo v3)."""
  if width % 4:
    raise errors.ConfigError(f"posemb='sincos2d' needs a width divisible by 4, got {width}.")
  quarter = width // 4
  omega = 1.0 / temperature ** (np.arange(quarter) / max(quarter - 1, 1))
  y, x = np.mgrid[:h, :w]
  ang_x = x.reshape(-1, 1) * omega[None]
  ang_y = y.reshape(-1, 1) * omega[None]
  pe = np.concatenate([np.sin(ang_x), np.cos(ang_x), np.sin(ang_y), np.cos(ang_y)], axis=1)
  return jnp.asarray(pe[None], jnp.float32)


_xavier = nn.initializers.xavier_uniform()


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> gelu (tanh approximation, flax's default) -> Dense(width)."""
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    dense = lambda n: nn.Dense(n, dtype=self.dtype, param_dtype=jnp.float32,
                               kernel_init=_xavier, bias_init=nn.initializers.normal(1e-6))
    width = x.shape[-1]
    x = nn.gelu(dense(self.mlp_dim)(x), approximate=True)  # Dense_0, then Dense_1.
    return dense(width)(x)


def _attention(num_heads: int, dtype):
  return nn.MultiHeadDotProductAttention(
      num_heads=num_heads, kernel_init=_xavier, dtype=dtype, param_dtype=jnp.float32,
      force_fp32_for_softmax=True)


class Encoder1DBlock(nn.Module):
  """x + MHA(LN(x)), then x + MLP(LN(x)). Returns (x, None): nn.scan's carry."""
  mlp_dim: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, unused=None):
    del unused
    ln = lambda: nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32)
    y = ln()(x)
    x = x + _attention(self.num_heads, self.dtype)(y, y)
    x = x + MlpBlock(self.mlp_dim, self.dtype)(ln()(x))
    return x, None


class Encoder(nn.Module):
  """`depth` blocks (per-layer `encoderblock_{i}` or scanned `encoderblock`), then `encoder_norm`."""
  depth: int
  mlp_dim: int
  num_heads: int
  scan: bool = False
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    block = nn.remat(Encoder1DBlock, prevent_cse=not self.scan) if self.remat else Encoder1DBlock
    kw = dict(mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype=self.dtype)
    if self.scan:
      stack = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                      length=self.depth)
      x, _ = stack(name="encoderblock", **kw)(x, None)
    else:
      for i in range(self.depth):
        x, _ = block(name=f"encoderblock_{i}", **kw)(x)
    return nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="encoder_norm")(x)


class MAPHead(nn.Module):
  """Multi-head attention pooling: a learned probe attends to the tokens, then + MLP(LN(.))."""
  mlp_dim: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    n, _, d = x.shape
    probe = self.param("probe", _xavier, (1, 1, d), jnp.float32)
    probe = jnp.tile(probe.astype(self.dtype), (n, 1, 1))
    x = _attention(self.num_heads, self.dtype)(probe, x)
    y = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32)(x)
    return (x + MlpBlock(self.mlp_dim, self.dtype)(y))[:, 0]


class Model(nn.Module):
  """big_vision's ViT classifier, under the model contract.

  `variant` ("B/16", "So400m/14", ...) sets width, depth, mlp_dim, num_heads
  and patch_size; any of them given explicitly wins over it (variant=None:
  big_vision's defaults, a B/16). `patch_size` is an int or an (h, w) pair.
  `apply(variables, images_BHWC, train=...)` returns (logits_BK, outputs),
  outputs holding "stem", "encoded", "head_input", "pre_logits" and "logits".
  """
  num_classes: int
  dtype: Any = jnp.float32
  variant: Optional[str] = "B/16"
  patch_size: Union[int, Sequence[int], None] = None
  width: Optional[int] = None
  depth: Optional[int] = None
  mlp_dim: Optional[int] = None
  num_heads: Optional[int] = None
  posemb: str = "learn"
  pool_type: str = "gap"
  rep_size: Union[int, bool] = False
  head_zeroinit: bool = True
  scan: bool = False
  remat: bool = False

  def sizes(self) -> dict[str, Any]:
    """The resolved width, depth, mlp_dim, num_heads and (h, w) patch_size."""
    out = {"patch_size": (16, 16), "width": 768, "depth": 12, "mlp_dim": None, "num_heads": 12,
           **decode_variant(self.variant)}
    for k in ("patch_size", "width", "depth", "mlp_dim", "num_heads"):
      if getattr(self, k) is not None:
        out[k] = getattr(self, k)
    p = out["patch_size"]
    out["patch_size"] = (p, p) if isinstance(p, int) else tuple(int(v) for v in p)
    out["mlp_dim"] = out["mlp_dim"] or 4 * out["width"]
    if self.posemb not in POSEMBS:
      raise errors.ConfigError(f"ViT posemb={self.posemb!r}: must be one of {POSEMBS}.")
    if self.pool_type not in POOL_TYPES:
      raise errors.ConfigError(f"ViT pool_type={self.pool_type!r}: must be one of {POOL_TYPES}.")
    if len(out["patch_size"]) != 2 or out["width"] % out["num_heads"]:
      raise errors.ConfigError(
          f"ViT sizes {out}: patch_size must be an int or an (h, w) pair and width a "
          "multiple of num_heads.")
    return out

  @nn.compact
  def __call__(self, images_BHWC, train: bool = False):
    del train  # No dropout (see the module docstring).
    s = self.sizes()
    out = {}
    x = nn.Conv(s["width"], s["patch_size"], strides=s["patch_size"], padding="VALID",
                dtype=self.dtype, param_dtype=jnp.float32, name="embedding")(
                    images_BHWC.astype(self.dtype))
    out["stem"] = x
    n, h, w, c = x.shape
    x = x.reshape(n, h * w, c)
    if self.posemb == "learn":
      pe = self.param("pos_embedding", nn.initializers.normal(stddev=1 / math.sqrt(c)),
                      (1, h * w, c), jnp.float32)
    else:
      pe = posemb_sincos_2d(h, w, c)
    x = x + pe.astype(self.dtype)  # Before the class token, as big_vision since 2022.
    if self.pool_type == "tok":
      cls = self.param("cls", nn.initializers.zeros, (1, 1, c), jnp.float32)
      x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (n, 1, 1)), x], axis=1)
    x = Encoder(s["depth"], s["mlp_dim"], s["num_heads"], scan=self.scan, remat=self.remat,
                dtype=self.dtype, name="Transformer")(x)
    out["encoded"] = x
    if self.pool_type == "map":
      x = MAPHead(s["mlp_dim"], s["num_heads"], self.dtype)(x)
    elif self.pool_type == "gap":
      x = jnp.mean(x.astype(jnp.float32), axis=1)
    else:  # "tok" (the class token) or "0" (the first patch's token).
      x = x[:, 0]
    x = out["head_input"] = x.astype(jnp.float32)
    if self.rep_size:
      rep = c if self.rep_size is True else int(self.rep_size)
      x = jnp.tanh(nn.Dense(rep, param_dtype=jnp.float32, name="pre_logits")(x))
    out["pre_logits"] = x
    kw = {"kernel_init": nn.initializers.zeros} if self.head_zeroinit else {}
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=jnp.float32,
                      name="head", **kw)(x)
    out["logits"] = logits
    return logits, out


def freeze(model: Model, variables):
  """Nothing to precompute for a ViT teacher: returns its arguments."""
  return model, variables


# ---------------------------------------------------------------------------
# The zoo: big_vision's names for its published ViT checkpoints.
# ---------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ZooEntry:
  path: str  # A gs:// file; ":img" names the image tower of a two-tower file.
  kwargs: dict  # The Model kwargs that fit the file (num_classes aside).
  res: int  # The resolution it was trained or fine-tuned at.
  classes: Optional[int]  # Its head's class count; None: no head (an image tower).


def _zoo() -> dict[str, ZooEntry]:
  zoo = {}
  # AugReg ("How to train your ViT", arXiv:2106.10270): big_vision's
  # models/vit.py VANITY_NAMES; kwargs from its configs/load_and_eval.py
  # (vit_i21k: pool_type="tok", 21,843 classes, no pre_logits).
  augreg = {
      "Ti/16": "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03",
      "S/32": "S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1",
      "S/16": "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03",
      "B/32": "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1",
      "B/16": "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1",
      "B/8": "B_8-i21k-300ep-lr_0.001-aug_medium2-wd_0.1",
      "L/16": "L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1",
  }
  for v, f in augreg.items():
    zoo[f"howto-i21k-{v}"] = ZooEntry(f"gs://vit_models/augreg/{f}-do_0.0-sd_0.0.npz",
                                      dict(variant=v, pool_type="tok"), 224, 21843)
  # Plain ViT-S/16 on ImageNet-1k (arXiv:2205.01580): VANITY_NAMES; kwargs
  # from configs/load_and_eval.py (vit_i1k).
  for ep in (90, 150, 300):
    zoo[f"i1k-s16-{ep}ep"] = ZooEntry(
        f"gs://big_vision/vit_s16_i1k_{ep}ep.npz",
        dict(variant="S/16", pool_type="gap", posemb="sincos2d", rep_size=True), 224, 1000)
  # DeiT-3 (facebookresearch/deit README_revenge.md), converted by big_vision
  # to take [-1, 1] inputs: VANITY_NAMES. A class token and ImageNet-1k heads
  # (the "21k" ones were pre-trained on 21k, then fine-tuned on 1k).
  for v, size in (("S", "small"), ("B", "base"), ("L", "large")):
    for res in (224, 384):
      for data in ("1k", "21k"):
        zoo[f"deit3_{v}_{res}_{data}"] = ZooEntry(
            f"gs://big_vision/zoo/deit3/bv_deit_3_{size}_{res}_{data}.npz",
            dict(variant=f"{v}/16", pool_type="tok"), res, 1000)
  # SigLIP image towers (arXiv:2303.15343): VANITY_NAMES (with the ":img"
  # suffix) and SigLIP_demo.ipynb (pool_type="map", no image head).
  siglip = {
      "B/16 224": "webli_en_b16_224_63724782", "B/16 256": "webli_en_b16_256_60500360",
      "B/16 384": "webli_en_b16_384_68578854", "B/16 512": "webli_en_b16_512_68580893",
      "L/16 256": "webli_en_l16_256_60552751", "L/16 384": "webli_en_l16_384_63634585",
      "So400m/14 224": "webli_en_so400m_224_57633886",
      "So400m/14 384": "webli_en_so400m_384_58765454",
      "B/16-i18n 256": "webli_i18n_b16_256_66117334",
  }
  for name, f in siglip.items():
    v, res = name.split(" ")
    zoo[f"SigLIP {name}"] = ZooEntry(f"gs://big_vision/siglip/{f}.npz:img",
                                     dict(variant=v.removesuffix("-i18n"), pool_type="map"),
                                     int(res), None)
  # SigLIP 2 (arXiv:2502.14786): the files of configs/proj/image_text/
  # README_siglip2.md, named as SigLIP2_demo.ipynb names them
  # (siglip2_{variant without "/", lower case}_{res}.npz), image tower as there.
  for v, resolutions in (("B/16", (224, 256, 384, 512)), ("B/32", (256,)),
                         ("L/16", (256, 384, 512)), ("So400m/14", (224, 384)),
                         ("So400m/16", (256, 384, 512)), ("g-opt/16", (256, 384))):
    for res in resolutions:
      f = f"siglip2_{v.lower().replace('/', '')}_{res}"
      zoo[f"SigLIP2 {v} {res}"] = ZooEntry(f"gs://big_vision/siglip2/{f}.npz:img",
                                           dict(variant=v, pool_type="map"), res, None)
  return zoo


ZOO = _zoo()


def resolve(init: str) -> tuple[str, Optional[ZooEntry]]:
  """An init string (a zoo name or a path) -> (the path to read, its zoo entry or None)."""
  entry = ZOO.get(init)
  return (entry.path, entry) if entry else (init, None)


def locate(init: str) -> str:
  """The model contract's name resolution: a zoo name -> its file (`ZOO`)."""
  return resolve(init)[0]


# ---------------------------------------------------------------------------
# Reading and writing big_vision `.npz` files.
# ---------------------------------------------------------------------------

def _split_suffix(path: str) -> tuple[str, Optional[str]]:
  """"f.npz:img" -> ("f.npz", "img"): a sub-tree of the file (one tower of two)."""
  head, sep, sub = path.rpartition(".npz:")
  return (head + ".npz", sub.strip("/")) if sep and sub else (path, None)


def _read_bytes(path: str, suffix: Optional[str]) -> bytes:
  if "://" not in path:
    try:
      with open(path, "rb") as f:
        return f.read()
    except OSError as e:
      raise errors.CheckpointError(
          f"ViT checkpoint {path!r} cannot be read ({e}). Check the path, or give a zoo "
          f"name (vit.ZOO, e.g. 'SigLIP B/16 224').") from e
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except (tf.errors.OpError, OSError) as e:
    local = "LOCAL.npz" + (f":{suffix}" if suffix else "")
    raise errors.CheckpointError(
        f"ViT checkpoint {path} cannot be read from here ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}). Copy it where this machine can read it: "
        f"`gsutil cp {path} LOCAL.npz`, then pass --config.t1_init={local} (or "
        f"--config.student_init={local}).") from e


def read_npz(path: str) -> dict[str, np.ndarray]:
  """The arrays of a ViT `.npz` (local or gs://, a zoo name, or `file.npz:sub`).

  The parameters alone: under `params/` or `opt/target/` when the file holds
  a trainer's state, then the `sub` tree of a two-tower file. bfloat16 arrays
  (which numpy stores as 2-byte void) come back as ml_dtypes bfloat16.
  """
  path, _ = resolve(path)
  file, sub = _split_suffix(path)
  data = _read_bytes(file, sub)
  if not data.startswith(b"PK"):
    raise errors.CheckpointError(
        f"ViT checkpoint {file!r} is not an .npz (a zip of numpy arrays). Pickled files "
        "are refused (they can run code): save plain arrays with np.savez.")
  try:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except ValueError as e:
    raise errors.CheckpointError(
        f"ViT checkpoint {file!r} holds pickled objects, which are refused (they can run "
        "code). Save plain arrays with np.savez.") from e
  except Exception as e:  # zipfile.BadZipFile and friends.
    raise errors.CheckpointError(f"ViT checkpoint {file!r} is not a readable .npz: {e}") from e
  for prefix in ("params/", "opt/target/"):  # A trainer's {params, opt} state.
    if any(k.startswith(prefix) for k in arrays):
      arrays = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
      break
  if sub:
    kept = {k[len(sub) + 1:]: v for k, v in arrays.items() if k.startswith(sub + "/")}
    if not kept:
      tops = sorted({k.split("/")[0] for k in arrays})
      raise errors.CheckpointError(
          f"ViT checkpoint {file!r} has no sub-tree {sub!r} (asked for by ':{sub}'); its "
          f"top-level names are {tops[:8]}. Name one of those after the ':'.")
    arrays = kept
  for k, v in arrays.items():
    if v.dtype.kind == "V":
      if v.dtype.itemsize != 2 or v.dtype.names is not None:
        raise errors.CheckpointError(
            f"ViT checkpoint {file!r}: array {k} has raw dtype {v.dtype}, not a bfloat16 "
            "as numpy stores it (|V2). Save float32 or bfloat16 arrays.")
      arrays[k] = v.view(jnp.bfloat16)
  return arrays


def _renumber_pre_linen(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Pre-linen files number a parent's modules of one kind with gaps
  (`LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`,
  `MlpBlock_3`): number each kind 0, 1, ... in order, as linen does (what
  flax's `convert_pre_linen` does for big_vision). A no-op on linen files."""
  children: dict[tuple[str, ...], set[str]] = {}
  for k in arrays:
    parts = k.split("/")
    for i in range(len(parts) - 1):
      children.setdefault(tuple(parts[:i]), set()).add(parts[i])
  renames = {}
  for parent, names in children.items():
    kinds: dict[str, list[int]] = {}
    for name in names:
      m = re.fullmatch(r"(.+)_(\d+)", name)
      if m:
        kinds.setdefault(m[1], []).append(int(m[2]))
    for kind, numbers in kinds.items():
      for new, old in enumerate(sorted(numbers)):
        renames[(parent, f"{kind}_{old}")] = f"{kind}_{new}"
  out = {}
  for k, v in arrays.items():
    parts = k.split("/")
    out["/".join([renames.get((tuple(parts[:i]), p), p) if i < len(parts) - 1 else p
                  for i, p in enumerate(parts)])] = v
  return out


def _fix_old_layouts(arrays: dict[str, np.ndarray], posemb_len: Optional[int]):
  """big_vision's older file layouts, into today's (as its `fix_old_checkpoints`)."""
  arrays = _renumber_pre_linen(arrays)
  for old in ("Transformer/posembed_input/pos_embedding", "Transformer/pos_embedding"):
    if old in arrays:  # The original ViT's, then pre-2022 big_vision's place.
      arrays["pos_embedding"] = arrays.pop(old)
  if "probe" in arrays:  # MAP heads during ViT-G's development were inlined.
    inlined = ("probe", "MlpBlock_0/", "MultiHeadDotProductAttention_0/", "LayerNorm_0/")
    arrays = {(f"MAPHead_0/{k}" if k.startswith(inlined) else k): v for k, v in arrays.items()}
  pe = arrays.get("pos_embedding")
  if pe is not None and pe.ndim == 3 and pe.shape[1] != posemb_len:
    n = pe.shape[1] - 1
    if n > 0 and math.isqrt(n) ** 2 == n:
      # Before 2022 the class token was put in front, then the position
      # embedding added to all: fold the class token's entry into `cls`.
      arrays["pos_embedding"] = pe[:, 1:]
      if "cls" in arrays:
        arrays["cls"] = (arrays["cls"].astype(np.float32) + pe[:, :1].astype(np.float32))
  return arrays


def _to_layout(arrays: dict[str, np.ndarray], scan: bool) -> dict[str, np.ndarray]:
  """Per-layer `encoderblock_{i}` <-> scanned `encoderblock` (leading depth axis)."""
  per_layer = {}
  for k in arrays:
    m = re.fullmatch(r"Transformer/encoderblock_(\d+)/(.+)", k)
    if m:
      per_layer.setdefault(int(m[1]), set()).add(m[2])
  stacked = [k for k in arrays if k.startswith("Transformer/encoderblock/")]
  out = dict(arrays)
  if scan and per_layer and not stacked:
    depth = max(per_layer) + 1
    leaves = per_layer[0]
    if sorted(per_layer) != list(range(depth)) or any(s != leaves for s in per_layer.values()):
      return arrays  # Incomplete blocks: left as they are, for the error to name them.
    for leaf in leaves:
      parts = [out.pop(f"Transformer/encoderblock_{i}/{leaf}") for i in range(depth)]
      if any(p.shape != parts[0].shape for p in parts):
        return arrays
      out[f"Transformer/encoderblock/{leaf}"] = np.stack(parts)
  elif not scan and stacked and not per_layer:
    for k in stacked:
      v = out.pop(k)
      leaf = k[len("Transformer/encoderblock/"):]
      for i in range(v.shape[0]):
        out[f"Transformer/encoderblock_{i}/{leaf}"] = v[i]
  return out


def resample_posemb(posemb: np.ndarray, length: int) -> np.ndarray:
  """A (1, g*g, C) position embedding on a (1, length, C) grid, bilinear.

  As big_vision's `resample_posemb` (scipy's zoom, order 1): square grids,
  the corner positions of the old grid kept at the corners of the new one.
  """
  _, n, c = posemb.shape
  old, new = math.isqrt(n), math.isqrt(length)
  grid = np.asarray(posemb, np.float32).reshape(old, old, c)

  def axis(size_old, size_new):
    pos = np.arange(size_new) * ((size_old - 1) / (size_new - 1) if size_new > 1 else 0.0)
    lo = np.clip(np.floor(pos).astype(int), 0, size_old - 1)
    hi = np.minimum(lo + 1, size_old - 1)
    return lo, hi, (pos - lo).astype(np.float32)

  lo, hi, f = axis(old, new)
  rows = grid[lo] * (1 - f)[:, None, None] + grid[hi] * f[:, None, None]
  out = rows[:, lo] * (1 - f)[None, :, None] + rows[:, hi] * f[None, :, None]
  return out.reshape(1, new * new, c)


def _describe(arrays: dict[str, np.ndarray]) -> str:
  """What model the file's arrays look like, in Model kwargs."""
  d = {}
  if (e := arrays.get("embedding/kernel")) is not None and e.ndim == 4:
    d["patch_size"], d["width"] = tuple(e.shape[:2]), e.shape[3]
  blocks = {int(m[1]) for k in arrays if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))}
  ln = arrays.get("Transformer/encoderblock/LayerNorm_0/scale")
  d["depth"] = len(blocks) if blocks else (ln.shape[0] if ln is not None else None)
  for k, v in arrays.items():
    if k.startswith("Transformer/encoderblock") and k.endswith("MlpBlock_0/Dense_0/kernel"):
      d["mlp_dim"] = v.shape[-1]
    if k.startswith("Transformer/encoderblock") and k.endswith("query/kernel") and v.ndim >= 3:
      d["num_heads"] = v.shape[-2]
  d["pool_type"] = ("map" if any(k.startswith("MAPHead_0/") for k in arrays) else
                    "tok" if "cls" in arrays else "gap or 0")
  d["posemb"] = "learn" if "pos_embedding" in arrays else "sincos2d"
  d["rep_size"] = arrays["pre_logits/kernel"].shape[-1] if "pre_logits/kernel" in arrays else False
  d["num_classes"] = arrays["head/kernel"].shape[-1] if "head/kernel" in arrays else "no head"
  return ", ".join(f"{k}={v}" for k, v in d.items() if v is not None)


def _params_of(tree) -> tuple[Any, bool]:
  """(params tree, whether `tree` was a variables dict)."""
  if isinstance(tree, Mapping):
    keys = set(tree.keys())
    if "params" in keys and keys <= {"params", "batch_stats"}:
      return tree["params"], True
  return tree, False


def _flat(params) -> list[tuple[str, Any]]:
  return [("/".join(str(p.key) for p in path), v)
          for path, v in jax.tree_util.tree_flatten_with_path(params)[0]]


def _model_hint(model: Optional[Model]) -> str:
  if model is None:
    return ""
  s = model.sizes()
  return (f" The model has width={s['width']}, depth={s['depth']}, mlp_dim={s['mlp_dim']}, "
          f"num_heads={s['num_heads']}, patch_size={s['patch_size']}, "
          f"posemb={model.posemb!r}, pool_type={model.pool_type!r}, "
          f"rep_size={model.rep_size}, num_classes={model.num_classes}.")


def load(template, path: str, *, head_mismatch: str = "reinit", model: Optional[Model] = None):
  """The weights of big_vision `.npz` `path` in the structure, shapes and dtypes of `template`.

  `path`: local or gs://, or a zoo name (`ZOO`), with an optional sub-tree
  suffix (`file.npz:img`, the image tower of a SigLIP file). Reads every
  layout big_vision's `vit.load` reads: bare keys or under `params/` or
  `opt/target/`; pre-linen module numbering; the position embedding inside
  the encoder (pre-2022) or in `posembed_input` (the original ViT's); a class
  token combined with its position embedding (split, as big_vision does);
  per-layer or scanned blocks, into the template's layout either way; a
  position embedding of another (square) grid, resampled bilinearly; bfloat16
  arrays. A head of another class count, or none: head_mismatch="reinit"
  keeps the template's head (zeros where the template holds only shapes),
  "error" raises errors.CheckpointError. Any other mismatch raises one
  errors.CheckpointError naming the arrays and the kwargs to check.
  """
  if head_mismatch not in HEAD_MISMATCH:
    raise ValueError(f"head_mismatch={head_mismatch!r}: must be one of {HEAD_MISMATCH}.")
  params, is_variables = _params_of(template)
  leaves = _flat(params)
  want = {k: tuple(v.shape) for k, v in leaves}
  scan = any(k.startswith("Transformer/encoderblock/") for k in want)
  posemb_len = want["pos_embedding"][1] if "pos_embedding" in want else None

  file = resolve(path)[0]
  arrays = _fix_old_layouts(read_npz(file), posemb_len)
  arrays = _to_layout(arrays, scan)
  described = _describe(arrays)
  pe = arrays.get("pos_embedding")
  if (pe is not None and posemb_len and pe.ndim == 3 and pe.shape[1] != posemb_len
      and pe.shape[2] == want["pos_embedding"][2]
      and math.isqrt(pe.shape[1]) ** 2 == pe.shape[1] and math.isqrt(posemb_len) ** 2 == posemb_len):
    logging.info("%s: position embedding resampled from a %d to a %d grid.", file,
                 math.isqrt(pe.shape[1]), math.isqrt(posemb_len))
    arrays["pos_embedding"] = resample_posemb(pe, posemb_len)

  head = None  # Why the head does not come from the file, if it does not.
  hk, hb = arrays.get("head/kernel"), arrays.get("head/bias")
  if hk is None and hb is None:
    head = "has no classifier head (head/kernel, head/bias)"
  elif (hk is not None and hb is not None and "head/kernel" in want
        and hk.shape[:-1] == want["head/kernel"][:-1] and hb.shape == hk.shape[-1:]
        and hk.shape[-1] != want["head/kernel"][-1]):
    head = f"has a head for {hk.shape[-1]} classes, the model num_classes={want['head/kernel'][-1]}"
  if head and head_mismatch == "error":
    raise errors.CheckpointError(
        f"ViT checkpoint {file!r} {head}: its logits are not this data set's. Fine-tune it "
        "on this data set first (configs/teachers/), or, if it was trained on this label "
        "set, set the model's num_classes to match the file.")
  if head:
    logging.info("%s %s; the model's own head is kept.", file, head)
    arrays.pop("head/kernel", None)
    arrays.pop("head/bias", None)

  missing = [k for k in want if k not in arrays and not (head and k.startswith("head/"))]
  unexpected = [k for k in arrays if k not in want]
  misshaped = [k for k in want if k in arrays and tuple(arrays[k].shape) != want[k]]
  if missing or unexpected or misshaped:
    # The arrays outside the blocks first: they tell the kwargs apart best.
    order = lambda k: (k.startswith("Transformer/encoderblock"), k)
    missing, unexpected, misshaped = (sorted(x, key=order) for x in (missing, unexpected, misshaped))
    lines = [f"  {k}: file {tuple(arrays[k].shape)}, model {want[k]}" for k in misshaped]
    lines += [f"  {k}: missing from the file (model {want[k]})" for k in missing]
    lines += [f"  {k}: in the file {tuple(arrays[k].shape)}, not in the model" for k in unexpected]
    shown = lines[:12] + ([f"  ... and {len(lines) - 12} more"] if len(lines) > 12 else [])
    raise errors.CheckpointError(
        f"ViT checkpoint {file!r} does not fit the model ({len(misshaped)} mis-shaped, "
        f"{len(missing)} missing, {len(unexpected)} unexpected arrays):\n" + "\n".join(shown) +
        f"\nThe file looks like {described}. Check the model kwargs (variant, width, depth, "
        "mlp_dim, num_heads, patch_size, posemb, pool_type, rep_size, num_classes) against "
        f"it.{_model_hint(model)}")

  def value(k, v):
    if k in arrays:
      return np.asarray(arrays[k], dtype=v.dtype)
    if isinstance(v, jax.ShapeDtypeStruct):  # A head the template gives no values for.
      return np.zeros(v.shape, v.dtype)
    return np.asarray(jax.device_get(v))
  new = [value(k, v) for k, v in leaves]
  out = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(params), new)
  return {**template, "params": out} if is_variables else out


def to_arrays(variables) -> dict[str, np.ndarray]:
  """The float32 arrays of a big_vision ViT `.npz`: the params, `/`-joined keys,
  blocks per layer (`encoderblock_{i}`) whether the model scans or not."""
  params, _ = _params_of(variables)
  arrays = {k: np.asarray(jax.device_get(v), np.float32) for k, v in _flat(params)}
  return _to_layout(arrays, scan=False)


def save(variables, path: str, layout: str = LAYOUTS[0]) -> None:
  """Writes an `.npz` big_vision's `vit.load` reads (bare `/`-joined keys, float32), atomically.

  Blocks are written per layer even from a scanned model: big_vision's
  `vit.load` reads that into either kind of model (as `load` here does), and
  so does every timm version (`VisionTransformer.load_pretrained`), which a
  scanned file would not be for older ones.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout={layout!r}: must be one of {LAYOUTS}.")
  fileio.write_npz(path, to_arrays(variables))
