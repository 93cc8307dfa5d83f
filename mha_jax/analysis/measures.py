"""Rank collapse (Dong et al., 2021) and token uniformity measures.

Res(X) = X − 1xᵀ is the distance of the token matrix X [T, D] from the rank-1
matrix whose tokens are all equal. Dong et al. take x minimising ‖Res‖; the fast
measure takes the mean token, the least-squares minimiser, which is what their
experiments plot; `composite_minimum` computes the ‖·‖_{1,∞} minimiser itself
(linear programs) as a check on it. The norm is the composite
‖·‖_{1,∞} = √(‖·‖₁ ‖·‖_∞) of their bound. Everything runs in float32, or in
float64 for float64 inputs (under `jax.enable_x64`), whose floor is ~1e-16
instead of ~3e-7.
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
  x = x_BxTxD.astype(attention.state_dtype(x_BxTxD.dtype))
  residual = x - x.mean(axis=-2, keepdims=True)
  return composite_norm(residual) / composite_norm(x)


def pairwise_token_cosine(x_BxTxD, valid_BxT=None, centered=False):
  """Cosine similarity of every token pair i < j of each sequence, flattened.

  Returns a 1-D NumPy array; pairs touching an invalid (padding) token are dropped.
  `centered` first subtracts each sequence's mean (valid) token: a shared offset
  makes raw cosines high without the tokens being alike otherwise.
  """
  x = np.asarray(x_BxTxD, np.float64)
  if centered:
    weight = (np.ones(x.shape[:2]) if valid_BxT is None
              else np.asarray(valid_BxT, np.float64))[..., None]
    x = x - (x * weight).sum(1, keepdims=True) / np.maximum(weight.sum(1, keepdims=True), 1)
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


def _min_inf_norm_given_one_norm(m_TxD, one_norm_cap):
  """min_x ‖M − 1xᵀ‖_∞ s.t. ‖M − 1xᵀ‖₁ ≤ cap, as a linear program.

  Variables [x (D), E (T·D) ≥ |M − 1xᵀ|, r]: minimise r subject to every row sum
  of E ≤ r and every column sum of E ≤ cap. Returns (value, x) or (inf, None).
  """
  from scipy import optimize, sparse   # only this exact measure needs scipy
  t, d = m_TxD.shape
  eye_e = sparse.identity(t * d, format="csr")
  x_of_e = sparse.kron(np.ones((t, 1)), sparse.identity(d), format="csr")  # E_td ↔ x_d
  zeros_r = sparse.csr_matrix((t * d, 1))
  m_flat = m_TxD.reshape(-1)
  abs_upper = sparse.hstack([-x_of_e, -eye_e, zeros_r])    #  M − x ≤ E
  abs_lower = sparse.hstack([x_of_e, -eye_e, zeros_r])     #  x − M ≤ E
  rows = sparse.hstack([sparse.csr_matrix((t, d)),
                        sparse.kron(sparse.identity(t), np.ones((1, d))),
                        -np.ones((t, 1))])                 #  Σ_d E_td ≤ r
  cols = sparse.hstack([sparse.csr_matrix((d, d)),
                        sparse.kron(np.ones((1, t)), sparse.identity(d)),
                        sparse.csr_matrix((d, 1))])        #  Σ_t E_td ≤ cap
  a_ub = sparse.vstack([abs_upper, abs_lower, rows, cols], format="csr")
  b_ub = np.concatenate([-m_flat, m_flat, np.zeros(t), np.full(d, one_norm_cap)])
  cost = np.zeros(d + t * d + 1)
  cost[-1] = 1.0
  bounds = [(None, None)] * d + [(0, None)] * (t * d + 1)
  res = optimize.linprog(cost, A_ub=a_ub, b_ub=b_ub, bounds=bounds, method="highs")
  return (res.fun, res.x[:d]) if res.status == 0 else (np.inf, None)


def composite_minimum(m_TxD, num_caps=8):
  """min_x ‖M − 1xᵀ‖_{1,∞} for one [T, D] matrix (NumPy, float64), with a bound.

  ‖·‖₁ (max column sum) is minimised exactly by the column-wise median, giving
  c_min; for caps c from c_min to ‖M − 1 x̄ᵀ‖₁ (the mean token's), the LP gives
  φ(c) = min ‖·‖_∞ subject to ‖·‖₁ ≤ c and its x; the smallest ‖M − 1xᵀ‖_{1,∞}
  over those x is returned. Returns {"value": that minimum (an upper
  bound on the true one, and ≤ the mean-token residual, whose own ‖·‖₁ is a cap),
  "lower_bound": √(c_min · φ(∞)), which no x can beat}.
  """
  m = np.asarray(m_TxD, np.float64)
  one_norm = lambda r: np.abs(r).sum(0).max()   # noqa: E731
  c_min = one_norm(m - np.median(m, axis=0))
  c_mean = one_norm(m - m.mean(0))
  caps = np.unique(np.concatenate([np.linspace(c_min, c_mean, num_caps), [c_mean]]))
  best = np.inf
  for cap in caps:
    _, x = _min_inf_norm_given_one_norm(m, cap * (1 + 1e-9))
    if x is not None:
      residual = np.abs(m - x)
      best = min(best, np.sqrt(residual.sum(0).max() * residual.sum(1).max()))
  # Every column sum of |M − 1xᵀ| at an ‖·‖_∞-optimal x is at most T·max|M|·2: a cap
  # that never binds.
  unconstrained, _ = _min_inf_norm_given_one_norm(m, 2 * m.shape[0] * np.abs(m).max() + 1)
  return {"value": float(best), "lower_bound": float(np.sqrt(c_min * unconstrained))}


def attention_only_network(x_BxTxD, weights_Lx3xDxD, *, alpha_hidden, h0="zeros", mask=None,
                           alpha=0.0, residual=None):
  """The setting of the rank-collapse theorem: L attention layers, no MLP, no skip.

  Each layer is X ← softmax(H_n) X W_V with a single head; α′ = 0 is the network
  of Dong et al. With `residual` ("convex", "scaled_branch", "standard") the
  attention output re-enters as in the model, attention.residual_update(X, u, α,
  residual), to see what the residual form alone does. Returns X after every
  layer, [L, B, T, D].
  """
  def layer(carry, w_3xDxD):
    x, h = carry
    q, k, v = (jnp.einsum("btd,de->bte", x, w)[:, :, None, :] for w in w_3xDxD)
    out, h = attention.hopfield_attention(q, k, v, h, alpha_hidden=alpha_hidden, mask=mask,
                                          h0=h0, restart=h is None)
    u = out[:, :, 0, :]
    x = u if residual is None else attention.residual_update(x, u, alpha, residual)
    return (x, h), x

  batch, length = x_BxTxD.shape[:2]
  (_, h), xs = layer((x_BxTxD, None), weights_Lx3xDxD[0])
  (_, _), rest = jax.lax.scan(layer, (xs, h), weights_Lx3xDxD[1:])
  return jnp.concatenate([xs[None], rest], axis=0)
