"""Standard attention by the platform's flash kernel (`implementation="flash"`),
the fair memory baseline for MHA: no T×T scores in memory on GPU/TPU.

  CPU   jax.nn.dot_product_attention(implementation="xla") (the scores exist
        per layer; XLA:CPU has no flash kernel).
  TPU   the layer-wise Pallas kernel (layerwise.py) with one slot and weight
        = scale: a Mosaic flash kernel that takes the models' dense masks, skips
        all-masked tiles, and under `causal` (decoders) does not even copy the
        tiles above the diagonal. JAX's
        Pallas flash/splash kernels take only causal or static masks and segment
        ids, not a traced [B, 1, T, S] mask. MHA's layerwise path runs the same
        kernel with L slots, so the comparison isolates the slots' cost.
  GPU   cuDNN's fused attention (jax.nn.dot_product_attention(implementation=
        "cudnn")) where this process has a GPU; the Pallas-Triton kernel when
        lowering for CUDA elsewhere (cuDNN cannot be traced without one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mha_jax import attention
from mha_jax.kernels import layerwise


def flash_attention(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, *, mask=None, scale=None, block=256,
                    causal=False):
  """softmax(mask(scale · Q Kᵀ)) V, out [B, T, N, D]; mask True = may attend,
  broadcastable to [B, N, T, S]; `causal` adds the causal mask (the Pallas kernels
  skip the tiles above the diagonal: no copy, no work)."""
  if scale is None:
    scale = q_BxTxNxD.shape[-1] ** -0.5
  operands = (q_BxTxNxD, k_BxSxNxD, v_BxSxNxD) + (() if mask is None else (mask,))

  def library(implementation):
    def run(q, k, v, *m):
      allowed = m[0] if m else None
      if causal:   # the Pallas kernels apply it themselves, tile by tile
        below = attention.causal_mask(q.shape[1])
        allowed = below if allowed is None else allowed & below
      return jax.nn.dot_product_attention(q, k, v, mask=allowed, scale=scale,
                                          implementation=implementation)
    return run

  def pallas(interpret, backend):
    def run(q, k, v, *m):
      return layerwise.layerwise_attention(q[None], k[None], v, jnp.full((1,), scale),
                                           mask=m[0] if m else None, block=block, causal=causal,
                                           interpret=interpret, backend=backend)
    return run

  gpu_here = jax.default_backend() == "gpu"
  return jax.lax.platform_dependent(
      *operands, cpu=library("xla"), tpu=pallas(False, "mosaic"),
      cuda=library("cudnn") if gpu_here else pallas(False, "triton"))
