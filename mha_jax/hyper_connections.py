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
  term to each logit: each token's n streams, flattened to [n·D] and RMS-normed
  (x̃), projected to n, n and n² logits and gated by a learned scalar per kind of
  weight: pre = σ(b_pre + α_pre·x̃φ_pre), post = 2σ(b_post + α_post·x̃φ_post),
  res = SK(b_res + α_res·mat(x̃φ_res)) — so each token gets its own weights.

This codebase's kind `hyper_connections` is mHC with n = 4 streams (the setting both
papers report): static by default (mixing costs ~(n² + 2n)·2 FLOPs per feature and
token per sublayer, noise beside attention and the MLP, while the carry grows to n
copies of x); `attention.hyper_connections_dynamic=True` adds the input-dependent
term (n·D·(2n + n²) + 3 more weights per sublayer and ~2·n·D·(2n + n²) FLOPs per
token, a D×24n projection at n = 4). Our choices where the abstract-level description
leaves them open: the norm has no gain (φ absorbs it), φ starts at 0 and the gates
at `DYNAMIC_GATE_INIT`, so the dynamic stack starts as the static one and φ still
receives a gradient. The learned parameters are offsets from the initial logits (zero at init), so
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
DYNAMIC_GATE_INIT = 0.01     # α of the input-dependent term at init (φ starts at 0)


def sinkhorn_knopp(logits_xRxR, iterations=SINKHORN_ITERATIONS):
  """exp(logits) made doubly stochastic by `iterations` rounds of row then column
  normalisation (columns sum to 1 exactly, rows to within the method's residual);
  leading axes (one matrix per token) are batch axes."""
  matrix = jnp.exp(logits_xRxR - jnp.max(logits_xRxR, axis=(-2, -1), keepdims=True))

  def normalise(_, m):
    m = m / jnp.sum(m, axis=-1, keepdims=True)
    return m / jnp.sum(m, axis=-2, keepdims=True)

  return jax.lax.fori_loop(0, iterations, normalise, matrix)


def dynamic_logits(streams_RxBxTxD, projections, gates_3, eps):
  """mHC's input-dependent terms α·x̃φ for (pre [B, T, R], post [B, T, R],
  res [B, T, R, R]); x̃ = RMSNorm of each token's streams flattened to [R·D];
  projections = (φ_pre [R·D, R], φ_post [R·D, R], φ_res [R·D, R·R])."""
  streams, batch, length, width = streams_RxBxTxD.shape
  flat_BxTxRD = jnp.moveaxis(streams_RxBxTxD.astype(jnp.float32), 0, 2).reshape(
      batch, length, streams * width)
  normed = flat_BxTxRD * jax.lax.rsqrt(jnp.mean(flat_BxTxRD ** 2, -1, keepdims=True) + eps)
  pre, post, res = (gate * (normed @ phi.astype(jnp.float32))
                    for gate, phi in zip(gates_3.astype(jnp.float32), projections))
  return pre, post, res.reshape(batch, length, streams, streams)


def initial_logits(sublayer, streams=STREAMS):
  """(pre [R], post [R], res [R, R]) logits at init for the `sublayer`-th sublayer of
  the stack (a traced int: 2·layer + 0 for attention, + 1 for the MLP)."""
  preferred = jnp.arange(streams) == sublayer % streams
  pre = jnp.where(preferred, 0.0, -np.log(2 * streams - 3.0))
  post = jnp.zeros((streams,))
  res = jnp.where(jnp.eye(streams, dtype=bool), 0.0, RES_OFF_DIAGONAL_LOGIT)
  return pre, post, res


def mixing_weights(pre_offset_R, post_offset_R, res_offset_RxR, sublayer, dynamic=None):
  """mHC's constrained weights (pre, post, res) from the learned offsets, float32:
  [R], [R], [R, R] (static), or per token [B, T, R], [B, T, R], [B, T, R, R] with
  `dynamic` (dynamic_logits' terms)."""
  initial = initial_logits(sublayer, pre_offset_R.shape[0])
  offsets = (pre_offset_R, post_offset_R, res_offset_RxR)
  pre, post, res = (start + offset.astype(jnp.float32) for start, offset in zip(initial, offsets))
  if dynamic is not None:
    pre, post, res = pre + dynamic[0], post + dynamic[1], res + dynamic[2]
  return jax.nn.sigmoid(pre), 2.0 * jax.nn.sigmoid(post), sinkhorn_knopp(res)


def expand(x_BxTxD, streams=STREAMS):
  """n copies of x: the streams before the first sublayer."""
  return jnp.broadcast_to(x_BxTxD[None], (streams,) + x_BxTxD.shape)


def _tokens(weights_R):
  """The einsum letters of a weight vector: none when static [R], "bt" per token."""
  return "bt" if weights_R.ndim == 3 else ""


def read(streams_RxBxTxD, pre):
  """The sublayer's input h = Σ_j pre_j x_j; pre [R] or per token [B, T, R]."""
  tokens = _tokens(pre)
  h = jnp.einsum(f"{tokens}j,jbtd->btd", pre, streams_RxBxTxD.astype(jnp.float32))
  return h.astype(streams_RxBxTxD.dtype)


def write(streams_RxBxTxD, res, post, y_BxTxD):
  """x_i ← Σ_j res_ij x_j + post_i y; res [R, R], post [R], or per token."""
  tokens = _tokens(post)
  streams = streams_RxBxTxD.astype(jnp.float32)
  mixed = jnp.einsum(f"{tokens}ij,jbtd->ibtd", res, streams)
  added = jnp.einsum(f"{tokens}i,btd->ibtd", post, y_BxTxD.astype(jnp.float32))
  return (mixed + added).astype(streams_RxBxTxD.dtype)


def readout(streams_RxBxTxD):
  """The stack's x: the streams' mean."""
  return jnp.mean(streams_RxBxTxD.astype(jnp.float32), axis=0).astype(streams_RxBxTxD.dtype)
