"""Rank collapse (Dong et al., 2021) and token uniformity measures.

Res(X) = X − 1xᵀ is the distance of the token matrix X [T, D] from the rank-1
matrix whose tokens are all equal. Dong et al. take x minimising ‖Res‖; we take
the mean token, the least-squares minimiser, which is what their experiments
plot. The norm is the composite ‖·‖_{1,∞} = √(‖·‖₁ ‖·‖_∞) of their bound.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mha_jax import attention


def composite_norm(m_TxD):
  """√(‖M‖₁ ‖M‖_∞): max absolute column sum times max absolute row sum."""
  abs_m = jnp.abs(m_TxD)
  return jnp.sqrt(abs_m.sum(axis=-2).max(axis=-1) * abs_m.sum(axis=-1).max(axis=-1))


def relative_rank_residual(x_BxTxD):
  """‖X − 1 x̄ᵀ‖_{1,∞} / ‖X‖_{1,∞} per sequence [B]: 0 when every token is equal."""
  x = x_BxTxD.astype(jnp.float32)
  residual = x - x.mean(axis=-2, keepdims=True)
  return composite_norm(residual) / composite_norm(x)


def pairwise_token_cosine(x_BxTxD, valid_BxT=None):
  """Cosine similarity of every token pair i < j of each sequence, flattened.

  Returns a 1-D NumPy array; pairs touching an invalid (padding) token are dropped.
  """
  x = np.asarray(x_BxTxD, np.float64)
  unit = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
  cos_BxTxT = np.einsum("btd,bsd->bts", unit, unit)
  length = x.shape[1]
  upper = np.triu(np.ones((length, length), bool), k=1)[None]
  if valid_BxT is not None:
    valid = np.asarray(valid_BxT, bool)
    upper = upper & valid[:, :, None] & valid[:, None, :]
  return cos_BxTxT[np.broadcast_to(upper, cos_BxTxT.shape)]


def summarize(similarities):
  """Numbers to print beside a violin plot."""
  s = np.asarray(similarities)
  return {"mean": float(s.mean()), "median": float(np.median(s)),
          "frac_above_0.9": float((s > 0.9).mean()), "count": int(s.size)}


def attention_only_network(x_BxTxD, weights_Lx3xDxD, *, alpha_hidden, h0="zeros", mask=None):
  """The setting of the rank-collapse theorem: L attention layers, no MLP, no skip.

  Each layer is X ← softmax(H_n) X W_V with a single head; α′ = 0 is the network
  of Dong et al. Returns X after every layer, [L, B, T, D].
  """
  def layer(carry, w_3xDxD):
    x, h = carry
    q, k, v = (jnp.einsum("btd,de->bte", x, w)[:, :, None, :] for w in w_3xDxD)
    out, h = attention.hopfield_attention(q, k, v, h, alpha_hidden=alpha_hidden, mask=mask,
                                          h0=h0, restart=h is None)
    x = out[:, :, 0, :]
    return (x, h), x

  batch, length = x_BxTxD.shape[:2]
  (_, h), xs = layer((x_BxTxD, None), weights_Lx3xDxD[0])
  (_, _), rest = jax.lax.scan(layer, (xs, h), weights_Lx3xDxD[1:])
  return jnp.concatenate([xs[None], rest], axis=0)
