"""A ViT forward pass in plain numpy (float64), written from the ViT paper.

Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words", eqs. 1-4: the image
cut into P x P patches, each flattened and linearly projected; a position
embedding added (here before the class token is put in front, as big_vision
does since 2022); L blocks of z' = z + MSA(LN(z)), z = z' + MLP(LN(z')) with
a two-layer GELU MLP; a final LayerNorm; then a pooling and a linear head.
Multi-head self-attention: softmax(q k^T / sqrt(d_head)) v per head, heads
concatenated and projected. GELU is its tanh approximation (Hendrycks &
Gimpel), LayerNorm's epsilon 1e-6, as big_vision (flax's defaults).

It reads a flat `{"a/b/kernel": array}` dict of big_vision's parameter names
and knows nothing of flax: tests compare models/vit.py against it.
"""

import numpy as np

EPS = 1e-6


def gelu(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, p, name):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + EPS) * p[f"{name}/scale"] + p[f"{name}/bias"]


def dense(x, p, name):
  return x @ p[f"{name}/kernel"] + p[f"{name}/bias"]


def attention(xq, xkv, p, name):
  """Multi-head attention; kernels (D, heads, d_head) in, (heads, d_head, D) out."""
  q = np.einsum("bld,dhk->bhlk", xq, p[f"{name}/query/kernel"]) + p[f"{name}/query/bias"][:, None]
  k = np.einsum("bld,dhk->bhlk", xkv, p[f"{name}/key/kernel"]) + p[f"{name}/key/bias"][:, None]
  v = np.einsum("bld,dhk->bhlk", xkv, p[f"{name}/value/kernel"]) + p[f"{name}/value/bias"][:, None]
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  heads = w @ v  # (B, heads, Lq, d_head)
  return np.einsum("bhlk,hkd->bld", heads, p[f"{name}/out/kernel"]) + p[f"{name}/out/bias"]


def mlp(x, p, name):
  return dense(gelu(dense(x, p, f"{name}/Dense_0")), p, f"{name}/Dense_1")


def sincos2d(h, w, width, temperature=10_000.0):
  """MoCo v3's fixed embedding: [sin(x w), cos(x w), sin(y w), cos(y w)], w geometric."""
  quarter = width // 4
  freqs = temperature ** -(np.arange(quarter) / (quarter - 1))
  rows = []
  for y in range(h):
    for x in range(w):
      rows.append(np.concatenate([np.sin(x * freqs), np.cos(x * freqs),
                                  np.sin(y * freqs), np.cos(y * freqs)]))
  return np.asarray(rows)[None]


def forward(p, images, *, patch, depth, pool_type, posemb="learn", scan=False):
  """Logits (float64) of a ViT whose big_vision params are the flat dict `p`.

  `patch`: an int or an (h, w) pair.
  """
  p = {k: np.asarray(v, np.float64) for k, v in p.items()}
  if scan:  # One stacked block -> the depth per-layer ones.
    for k in [k for k in p if k.startswith("Transformer/encoderblock/")]:
      for i in range(depth):
        p[k.replace("encoderblock/", f"encoderblock_{i}/")] = p[k][i]
  x = np.asarray(images, np.float64)
  b, hh, ww, c = x.shape
  ph, pw = (patch, patch) if isinstance(patch, int) else patch
  h, w = hh // ph, ww // pw
  # Patches, each flattened in (row, column, channel) order as the conv kernel is.
  patches = x.reshape(b, h, ph, w, pw, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h * w, -1)
  kernel = p["embedding/kernel"]
  z = patches @ kernel.reshape(-1, kernel.shape[-1]) + p["embedding/bias"]
  z = z + (p["pos_embedding"] if posemb == "learn" else sincos2d(h, w, z.shape[-1]))
  if pool_type == "tok":
    z = np.concatenate([np.repeat(p["cls"], b, axis=0), z], axis=1)
  for i in range(depth):
    blk = f"Transformer/encoderblock_{i}"
    y = layer_norm(z, p, f"{blk}/LayerNorm_0")
    z = z + attention(y, y, p, f"{blk}/MultiHeadDotProductAttention_0")
    z = z + mlp(layer_norm(z, p, f"{blk}/LayerNorm_1"), p, f"{blk}/MlpBlock_0")
  z = layer_norm(z, p, "Transformer/encoder_norm")
  if pool_type == "gap":
    feat = z.mean(1)
  elif pool_type in ("tok", "0"):
    feat = z[:, 0]
  else:  # "map": a learned probe attends to all tokens, then a residual MLP.
    probe = np.repeat(p["MAPHead_0/probe"], b, axis=0)
    y = attention(probe, z, p, "MAPHead_0/MultiHeadDotProductAttention_0")
    y = y + mlp(layer_norm(y, p, "MAPHead_0/LayerNorm_0"), p, "MAPHead_0/MlpBlock_0")
    feat = y[:, 0]
  if "pre_logits/kernel" in p:
    feat = np.tanh(dense(feat, p, "pre_logits"))
  return dense(feat, p, "head")
