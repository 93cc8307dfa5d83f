"""Hyper-connections: n residual streams instead of one, mixed by learned weights
around every sublayer.

- Hyper-Connections (Zhu et al., ByteDance Seed, ICLR 2025, arXiv 2409.19606): the
  residual stream becomes n streams x_1 … x_n (n copies of the embedding at the
  start). Around each sublayer F (attention, then the MLP):
      input   h = Σ_j pre_j x_j                      (their width connection A_m)
      update  x_i ← Σ_j res_ij x_j + post_i F(h)      (A_r, and the depth connection B)
  The static form learns pre [n], post [n] and res [n, n] per sublayer, initialised
  as pre = e_{k mod n} (the k-th sublayer reads one stream), post = 1, res = I: with
  equal streams, exactly the residual x ← x + F(x). The paper's LMs use n = 4.
- mHC (Xie et al., DeepSeek-AI, 2025, "mHC: Manifold-Constrained Hyper-Connections",
  arXiv 2512.24880) keeps that update and constrains its weights: pre = σ(b_pre),
  post = 2σ(b_post), res = Sinkhorn–Knopp(b_res), i.e. exp(b_res) scaled by
  alternating row and column normalisations (20 of them) onto the doubly stochastic
  matrices (non-negative, rows and columns summing to 1). Products of doubly
  stochastic matrices stay doubly stochastic, so the mixing composed over depth can
  neither amplify nor shrink the streams' mean. mHC also adds an input-dependent
  term to each b (a projection of the RMS-normed streams, gated by a learned α);
  this module is the static part (that term left out), again with n = 4.

This codebase's kind `hyper_connections` is static mHC with n = 4 streams (the
setting both papers report; mixing costs ~(n² + 2n)·2 FLOPs per feature and token
per sublayer, noise beside attention and the MLP, while the carry grows to n copies
of x). The learned parameters are offsets from the initial logits (zero at init), so
one scanned parameter shape serves every layer although HC's initial read stream
k mod n depends on the layer; the gradient is the same as learning the logits.
Initial logits (so that the stack starts as the plain pre-norm stack, as in HC):
- pre: 0 on stream k = (2·layer + sublayer) mod n, −log(2n − 3) elsewhere, so
  σ gives 1/2 there and 1/(2n − 2) elsewhere: HC's one-hot read, softened so that σ
  has a gradient everywhere, and summing to 1 so that equal streams read as x;
- post: 0, so 2σ = 1: every stream receives F(h), as HC's B = 1;
- res: 0 on the diagonal, `RES_OFF_DIAGONAL_LOGIT` elsewhere: near HC's A_r = I
  (diagonal 0.948 at n = 4) with a finite gap, which keeps exp's gradient alive; any
  doubly stochastic matrix maps equal streams to themselves.
The stack's output is the streams' mean (HC sums them; the final norm removes the
factor n but for its ε, and the mean makes the initial stack exactly the plain one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

STREAMS = 4
SINKHORN_ITERATIONS = 20     # mHC's t_max
RES_OFF_DIAGONAL_LOGIT = -4.0


def sinkhorn_knopp(logits_RxR, iterations=SINKHORN_ITERATIONS):
  """exp(logits) made doubly stochastic by `iterations` rounds of row then column
  normalisation (columns sum to 1 exactly, rows to within the method's residual)."""
  matrix = jnp.exp(logits_RxR - jnp.max(logits_RxR))

  def normalise(_, m):
    m = m / jnp.sum(m, axis=1, keepdims=True)
    return m / jnp.sum(m, axis=0, keepdims=True)

  return jax.lax.fori_loop(0, iterations, normalise, matrix)


def initial_logits(sublayer, streams=STREAMS):
  """(pre [R], post [R], res [R, R]) logits at init for the `sublayer`-th sublayer of
  the stack (a traced int: 2·layer + 0 for attention, + 1 for the MLP)."""
  preferred = jnp.arange(streams) == sublayer % streams
  pre = jnp.where(preferred, 0.0, -np.log(2 * streams - 3.0))
  post = jnp.zeros((streams,))
  res = jnp.where(jnp.eye(streams, dtype=bool), 0.0, RES_OFF_DIAGONAL_LOGIT)
  return pre, post, res


def mixing_weights(pre_offset_R, post_offset_R, res_offset_RxR, sublayer):
  """mHC's constrained weights (pre, post, res) from the learned offsets, float32."""
  pre, post, res = initial_logits(sublayer, pre_offset_R.shape[0])
  as32 = lambda a: a.astype(jnp.float32)
  return (jax.nn.sigmoid(pre + as32(pre_offset_R)),
          2.0 * jax.nn.sigmoid(post + as32(post_offset_R)),
          sinkhorn_knopp(res + as32(res_offset_RxR)))


def expand(x_BxTxD, streams=STREAMS):
  """n copies of x: the streams before the first sublayer."""
  return jnp.broadcast_to(x_BxTxD[None], (streams,) + x_BxTxD.shape)


def read(streams_RxBxTxD, pre_R):
  """The sublayer's input h = Σ_j pre_j x_j."""
  h = jnp.tensordot(pre_R, streams_RxBxTxD.astype(jnp.float32), 1)
  return h.astype(streams_RxBxTxD.dtype)


def write(streams_RxBxTxD, res_RxR, post_R, y_BxTxD):
  """x_i ← Σ_j res_ij x_j + post_i y."""
  mixed = jnp.tensordot(res_RxR, streams_RxBxTxD.astype(jnp.float32), 1)
  updated = mixed + post_R[:, None, None, None] * y_BxTxD.astype(jnp.float32)[None]
  return updated.astype(streams_RxBxTxD.dtype)


def readout(streams_RxBxTxD):
  """The stack's x: the streams' mean."""
  return jnp.mean(streams_RxBxTxD.astype(jnp.float32), axis=0).astype(streams_RxBxTxD.dtype)
