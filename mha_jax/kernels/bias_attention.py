"""Materialised MHA through a flash kernel with an additive bias (`implementation="cudnn"`).

With s_n = scale · q_n k_nᵀ, the layer's logits are

    H_n = c_prev · H_{n−1} + c_s · s_n

so softmax(mask(H_n)) V is dot-product attention with bias c_prev · H_{n−1} and
score scale c_s · scale. Inside a chain (c_prev, c_s) = (α′, 1−α′); where a chain
starts (layer 1, a `restart`, or no H_{n−1}) c_prev = 0 and c_s = 1−α′ (h0
"zeros") or 1 (h0 "first_scores", the layer is plain attention).

On GPU `jax.nn.dot_product_attention(bias=…, implementation="cudnn")` runs cuDNN's
flash kernel: what this saves is the T×S attention probabilities (never formed in
the forward pass, nor stored for the backward pass), not H. H_n is still
materialised in float32, because the next layer reads it as its bias: per layer
the carry is H_n [B, N, T, S] as in "naive". The bias enters cuDNN in the query's
dtype (bf16/fp16), so the softmax sees H_{n−1} rounded to it.

The gradient of H_{n−1} (and so of earlier layers' q, k and of α′) passes through
cuDNN's bias gradient, which has open JAX issues (jax-ml/jax #27184, #30593,
#32242): check gradients against "naive" on the GPU before training with it.
The same arithmetic with `implementation="xla"` runs everywhere, which is how the
CPU tests check values and gradients. α′ may be traced (vmapped sweeps): c_s · scale
is folded into q, because cuDNN takes its `scale` as a Python float.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mha_jax import attention

IMPLEMENTATIONS = ("cudnn", "xla")


def check_backend(implementation, backend):
  """One ValueError where `implementation` cannot run on `backend`."""
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"implementation={implementation!r}; allowed: {IMPLEMENTATIONS}")
  if implementation == "cudnn" and backend != "gpu":
    raise ValueError(f"attention.implementation='cudnn' for kind 'hopfield' needs an NVIDIA "
                     f"GPU (cuDNN), and this backend is {backend!r}: use 'naive' or 'fused'")


def chain_coefficients(alpha_hidden, starts_chain, h0):
  """(c_prev, c_s): H_n = c_prev · H_{n−1} + c_s · s_n (module docstring)."""
  c_prev = jnp.where(starts_chain, 0.0, alpha_hidden)
  c_s = jnp.where(starts_chain, 1.0 if h0 == "first_scores" else 1.0 - alpha_hidden,
                  1.0 - alpha_hidden)
  return c_prev, c_s


def bias_hopfield_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, h_prev_BxNxTxS, *, alpha_hidden,
                            restart=False, h0="zeros", mask=None, scale=None,
                            implementation="cudnn"):
  """One MHA layer: (out [B, T, N, D], H_n [B, N, T, S] float32), the values of
  `attention.hopfield_attention` (no attention dropout: the kernel has none).

  h_prev_BxNxTxS: H_{n−1}, or None before the first layer. mask: boolean, True =
  may attend, broadcastable to [B, N, T, S]. implementation: "cudnn" (GPU) or
  "xla" (any backend, the same arithmetic)."""
  if h0 not in attention.CHAIN_STARTS:
    raise ValueError(f"h0={h0!r} is not a known chain start; allowed: {attention.CHAIN_STARTS}")
  check_backend(implementation, jax.default_backend())
  if scale is None:
    scale = q_BxTxNxD.shape[-1] ** -0.5
  starts_chain = jnp.logical_or(restart, h_prev_BxNxTxS is None)
  c_prev, c_s = chain_coefficients(alpha_hidden, starts_chain, h0)
  s_BxNxTxS = attention.attention_scores(q_BxTxNxD, k_BxSxNxD, scale)
  if h_prev_BxNxTxS is None:
    bias_BxNxTxS = jnp.zeros_like(s_BxNxTxS)
  else:
    bias_BxNxTxS = c_prev * h_prev_BxNxTxS.astype(s_BxNxTxS.dtype)
  h_BxNxTxS = bias_BxNxTxS + c_s * s_BxNxTxS
  dtype = q_BxTxNxD.dtype
  if mask is not None:
    mask = jnp.asarray(mask, bool)
  out_BxTxNxD = jax.nn.dot_product_attention(
      (q_BxTxNxD * (c_s * scale)).astype(dtype), k_BxSxNxD.astype(dtype),
      v_BxSxNxD.astype(dtype), bias=bias_BxNxTxS.astype(dtype), mask=mask, scale=1.0,
      implementation=implementation)
  return out_BxTxNxD.astype(v_BxSxNxD.dtype), h_BxNxTxS
