"""Attention from a Hopfield energy (issue 20 §2; formulas in shared/spec/energy.md).

Shapes as in attention.py: B batch, T queries, S keys, N heads, D head dim. Scaled
scores u are [B, N, T, S]; masks are boolean, True = may attend, broadcastable to
[B, N, T, S].

Source-field energy (attention as a gradient, any V), summed over b, n, t:

    E(J) = Σ_t lse_{s allowed}( scale·q_t·k_s + J_t·v_s )
    ∂E/∂J_t |_{J=0} = Σ_s softmax_s(scale·q_t·k_s) v_s                (attention, exactly)

Hopfield energy of one query state ξ ∈ ℝ^D (in key space), for a Lagrangian L:

    u_s = β k_s·ξ,          E(ξ) = −β⁻¹ L(u) + ½‖ξ‖²
    ξ − ∂E/∂ξ = Σ_s ∇L(u)_s k_s = Kᵀ sep(β K ξ)           (a unit gradient step = one update)

so sep = ∇L and the energy and the update cannot disagree. Retrieval: ξ⁰ = q, then
ξ ← Kᵀ sep(β K ξ) `steps` times, then out = sep(β K ξ)ᵀ V, which is the source-field
gradient ∂/∂J L(β K ξ + V J) at J = 0 of the same L. steps = 0 with softmax is
attention.dot_product_attention, bit for bit.

    separation       L(u)                              sep(u) = ∇L(u)
    softmax          lse(u)                            softmax(u)
    entmax α         Ω*_α(u) = max_p ⟨p,u⟩ + H_α(p)     [(α−1)u − τ]₊^{1/(α−1)}, Σ = 1
    sparsemax        Ω*_2(u)                           projection of u onto the simplex
    polynomial n     ‖ReLU(u)‖_n                        ReLU(u)^{n−1} / ‖ReLU(u)‖_n^{n−1}
    cubic (c₂, c₃)   lse(φ(u)), φ(u) = u + c₂u² + c₃u³   softmax(φ(u)) ⊙ φ′(u)

H_α(p) = (1 − Σ_s p_s^α)/(α(α−1)) is the Tsallis entropy on the simplex (Shannon at
α = 1, so entmax 1 is softmax and entmax 2 is sparsemax). Weights sum to 1 for softmax,
entmax and sparsemax only. Where L is convex (all but cubic) the update is a
concave–convex step: E(ξ_new) ≤ E(ξ) always. lse∘φ is not convex, so a cubic step
can raise E; it is still the energy's gradient step. With c₃ > 0 the cubic energy is
unbounded below (u³ beats ½‖ξ‖²): each step scales ξ by about φ′(u), so iterating from
a large overlap grows ξ without limit (float32 overflows within 3 steps at β‖k‖² ≈ 32).
Rows with no allowed key get uniform weights 1/S (attention.masked_softmax's
padding-row convention) and L = 0.

What is whose. The paper (A. Farooq, arXiv 2506.11043; only its abstract is
available) claims: an energy whose gradient is attention, whose stationary points
are attention, whose minima are "context wells", and non-linear heads from replacing
its linear part. The formulas above are this codebase's reading, built on published
energies: the source-field energy (lse's gradient is the softmax), Ramsauer et al.
2021 for softmax with the key-space iteration of ml-jku/hopfield-layers, Santos et
al. 2024 / Peters et al. 2019 for entmax, Krotov & Hopfield 2016 for the polynomial
head. Ours: the polynomial Lagrangian is the n-norm of ReLU scores, a monotone
transform ((n·Σ ReLU(u)ⁿ/n)^{1/n}) of their Σ F(u), F = ReLUⁿ/n, because with ½‖ξ‖²
the literal Σ F is unbounded below and its iteration overflows; it is homogeneous, so
β drops out. The cubic φ (the abstract's spline analogy), reading "context wells" as
fixed points of the update and typing them by how many keys hold 90 % of the weight
(after Ramsauer et al.'s head classes) are ours too.
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mha_jax import attention

SEPARATIONS = ("softmax", "sparsemax", "entmax", "polynomial", "cubic")
# Used when separation_param is None; softmax and sparsemax take no parameter.
DEFAULT_SEPARATION_PARAMS = {"entmax": 1.5, "polynomial": 3.0, "cubic": (0.0, 1.0 / 6.0)}
WELL_TYPES = ("single", "metastable", "global")
WELL_MASS = 0.9


def resolve_separation(separation, separation_param=None):
  """The parameter `separate` will use, after checking the pair.

  entmax: α ≥ 1. polynomial: degree n ≥ 2 (n < 2 has an infinite derivative at 0).
  cubic: (c₂, c₃), or one number c₃ with c₂ = 0; c₂² ≤ 3c₃ keeps φ non-decreasing,
  so weights stay ≥ 0 (c₂ = c₃ = 0 is softmax; the default (0, 1/6) is sinh's cubic
  Taylor polynomial). Traced parameters (vmapped sweeps) are not checked.
  """
  if separation not in SEPARATIONS:
    raise ValueError(f"separation={separation!r} is not known; allowed: {SEPARATIONS}")
  if separation_param is None:
    return DEFAULT_SEPARATION_PARAMS.get(separation)
  if separation in ("softmax", "sparsemax"):
    raise ValueError(f"separation_param={separation_param!r} given for {separation!r}; "
                     "allowed: None (it takes no parameter)")
  if separation == "cubic":
    return _cubic_coefficients(separation_param)
  if not _is_scalar(separation_param):
    raise ValueError(f"separation_param={separation_param!r} for {separation!r}; allowed: "
                     "a real number")
  if isinstance(separation_param, numbers.Real):
    least = 1.0 if separation == "entmax" else 2.0
    if not np.isfinite(separation_param) or separation_param < least:
      name = "alpha" if separation == "entmax" else "degree n"
      raise ValueError(f"separation_param={separation_param!r} for {separation!r}; allowed: "
                       f"a finite {name} >= {least:g}")
  return separation_param


def _is_scalar(value):
  """A real number, or a 0-d array (traced under jit/vmap)."""
  return isinstance(value, numbers.Real) or (
      isinstance(value, (jax.Array, np.ndarray)) and value.shape == ()
      and jnp.issubdtype(value.dtype, jnp.number))


def _cubic_coefficients(param):
  pair = (0.0, param) if not isinstance(param, (tuple, list)) else tuple(param)
  concrete = all(isinstance(c, numbers.Real) for c in pair)
  if len(pair) != 2 or not all(map(_is_scalar, pair)) or (
      concrete and (not np.all(np.isfinite(pair)) or pair[0] ** 2 > 3 * pair[1])):
    raise ValueError(f"separation_param={param!r} for 'cubic'; allowed: c3 or (c2, c3), "
                     "finite, with c2**2 <= 3*c3 (a non-decreasing phi)")
  return pair


def _row_allowed(shape, mask):
  """(allowed [shape], row_has_key [..., 1]) for logits of `shape`."""
  allowed = jnp.ones(shape, jnp.bool_) if mask is None else jnp.broadcast_to(mask, shape)
  return allowed, jnp.any(allowed, axis=-1, keepdims=True)


def _finish(weights, allowed, row_has_key):
  """Masked keys get exactly 0; a row with no allowed key is uniform."""
  weights = jnp.where(allowed, weights, 0.0)
  return jnp.where(row_has_key, weights, 1.0 / weights.shape[-1])


def sparsemax(logits, allowed):
  """Euclidean projection of the allowed logits onto the simplex (Martins & Astudillo
  2016), by sorting; exact, and plain autodiff gives its exact Jacobian."""
  z = jnp.where(allowed, logits, -jnp.inf)
  z_max = jnp.max(z, axis=-1, keepdims=True)
  z = jnp.where(allowed, logits, jnp.where(jnp.isfinite(z_max), z_max, 0.0) - 2.0)
  z_sorted = -jnp.sort(-z, axis=-1)
  rank = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
  cumulative = jnp.cumsum(z_sorted, axis=-1)
  in_support = 1.0 + rank * z_sorted > cumulative
  support = jnp.sum(in_support, axis=-1, keepdims=True)
  tau = (jnp.take_along_axis(cumulative, support - 1, axis=-1) - 1.0) / support.astype(z.dtype)
  return jnp.maximum(z - tau, 0.0)


@jax.custom_jvp
def _entmax_bisect(logits, alpha):
  """α-entmax of filled logits (α > 1) by bisection on the threshold τ of
  p = [(α−1)u − τ]₊^{1/(α−1)}; τ lies in [max − 1, max − S^{1−α}] of (α−1)u."""
  x = (alpha - 1.0) * logits
  power = 1.0 / (alpha - 1.0)
  x_max = jnp.max(x, axis=-1, keepdims=True)
  bounds = (x_max - 1.0, x_max - logits.shape[-1] ** (1.0 - alpha))

  def halve(_, lo_hi):
    lo, hi = lo_hi
    mid = 0.5 * (lo + hi)
    mass_at_least_one = jnp.sum(jnp.maximum(x - mid, 0.0) ** power, -1, keepdims=True) >= 1.0
    return jnp.where(mass_at_least_one, mid, lo), jnp.where(mass_at_least_one, hi, mid)

  lo, _ = jax.lax.fori_loop(0, jnp.finfo(x.dtype).nmant + 2, halve, bounds)
  p = jnp.maximum(x - lo, 0.0) ** power  # τ = lo keeps mass ≥ 1, so the support is not empty
  return p / jnp.sum(p, axis=-1, keepdims=True)


@_entmax_bisect.defjvp
def _entmax_bisect_jvp(primals, tangents):
  """Peters et al. 2019: ∂p/∂u = diag(g) − g gᵀ/Σg, g = p^{2−α} on the support.
  α's tangent is ignored: no gradient flows to α."""
  logits, alpha = primals
  logits_dot, _ = tangents
  p = _entmax_bisect(logits, alpha)
  g = jnp.where(p > 0, p ** (2.0 - alpha), 0.0)
  g_dot = g * logits_dot
  return p, g_dot - g * jnp.sum(g_dot, -1, keepdims=True) / jnp.sum(g, -1, keepdims=True)


def entmax(logits, alpha, allowed):
  """α-entmax over the allowed logits; α = 1 is softmax (also for a traced α)."""
  if isinstance(alpha, numbers.Real) and alpha == 1.0:
    return attention.masked_softmax(logits, allowed)
  alpha = jnp.asarray(alpha, logits.dtype)
  alpha_safe = jnp.where(alpha == 1.0, 2.0, alpha)
  z = jnp.where(allowed, logits, -jnp.inf)
  z_max = jnp.max(z, axis=-1, keepdims=True)
  # Far enough below the top that its weight is 0: (α−1)·gap ≥ 2 > 1.
  fill = jnp.where(jnp.isfinite(z_max), z_max, 0.0) - 2.0 / (alpha_safe - 1.0)
  sparse = _entmax_bisect(jnp.where(allowed, logits, fill), alpha_safe)
  return jnp.where(alpha == 1.0, attention.masked_softmax(logits, allowed), sparse)


def _polynomial(logits, degree, allowed):
  """ReLU(u)^{n−1}/‖ReLU(u)‖_n^{n−1}, computed on ReLU(u)/max (it is scale-free); all
  zeros where no score is positive (L is 0 around there)."""
  relu = jnp.where(allowed, jnp.maximum(logits, 0.0), 0.0)
  top = jnp.max(relu, axis=-1, keepdims=True)
  ratio = relu / jnp.where(top > 0, top, 1.0)
  total = jnp.sum(ratio ** degree, -1, keepdims=True)  # ≥ 1 where top > 0
  return ratio ** (degree - 1.0) / jnp.where(top > 0, total, 1.0) ** ((degree - 1.0) / degree)


def _cubic_phi(logits, coefficients):
  c2, c3 = coefficients
  phi = logits + c2 * logits ** 2 + c3 * logits ** 3
  return phi, 1.0 + 2.0 * c2 * logits + 3.0 * c3 * logits ** 2


def separate(logits, *, separation, separation_param=None, mask=None):
  """sep(u) = ∇L(u) on the last axis (table in the module docstring): the weights
  of one update and of the readout. `logits` are scaled scores u, any leading shape;
  `mask` broadcastable to them, True = may attend."""
  param = resolve_separation(separation, separation_param)
  logits = logits.astype(attention.state_dtype(logits.dtype))
  if separation == "softmax":
    return attention.masked_softmax(logits, mask)
  allowed, row_has_key = _row_allowed(logits.shape, mask)
  if separation == "sparsemax":
    weights = sparsemax(logits, allowed)
  elif separation == "entmax":
    weights = entmax(logits, param, allowed)
  elif separation == "polynomial":
    weights = _polynomial(logits, param, allowed)
  else:
    phi, phi_prime = _cubic_phi(logits, param)
    weights = attention.masked_softmax(phi, allowed) * phi_prime
  return _finish(weights, allowed, row_has_key)


def lagrangian(logits, *, separation, separation_param=None, mask=None):
  """L(u) over the allowed keys, [...] (the last axis reduced); ∇L = `separate`.
  A row with no allowed key has L = 0 (and gradient 0)."""
  param = resolve_separation(separation, separation_param)
  logits = logits.astype(attention.state_dtype(logits.dtype))
  allowed, row_has_key = _row_allowed(logits.shape, mask)
  value = _lagrangian(logits, separation, param, allowed | ~row_has_key)
  return jnp.where(row_has_key[..., 0], value, 0.0)


def _lagrangian(logits, separation, param, allowed):
  if separation in ("softmax", "cubic"):
    scores = logits if separation == "softmax" else _cubic_phi(logits, param)[0]
    return jax.nn.logsumexp(jnp.where(allowed, scores, -jnp.inf), axis=-1)
  if separation == "polynomial":
    relu = jnp.where(allowed, jnp.maximum(logits, 0.0), 0.0)
    top = jnp.max(relu, axis=-1)
    ratio = relu / jnp.where(top > 0, top, 1.0)[..., None]
    total = jnp.sum(ratio ** param, -1)
    return top * jnp.where(top > 0, total, 1.0) ** (1.0 / param)
  alpha = jnp.asarray(2.0 if separation == "sparsemax" else param, logits.dtype)
  p = separate(logits, separation=separation, separation_param=param, mask=allowed)
  linear = jnp.sum(jnp.where(allowed, p * logits, 0.0), -1)
  return linear + _tsallis_entropy(p, alpha)


def _tsallis_entropy(p, alpha):
  """H_α(p) = (1 − Σ p^α)/(α(α−1)); Shannon's −Σ p log p at α = 1."""
  shannon = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), -1)
  alpha_safe = jnp.where(alpha == 1.0, 2.0, alpha)
  tsallis = (1.0 - jnp.sum(p ** alpha_safe, -1)) / (alpha_safe * (alpha_safe - 1.0))
  return jnp.where(alpha == 1.0, shannon, tsallis)


def attention_energy(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, source_BxTxNxD, *, mask=None,
                     scale=None):
  """E(J) = Σ_{b,n,t} lse_{s allowed}(scale·q_t·k_s + J_t·v_s), a scalar; its gradient
  in `source` J at 0 is softmax attention. A row with no allowed key adds nothing."""
  s_BxNxTxS = attention.attention_scores(q_BxTxNxD, k_BxSxNxD, scale)
  source_BxNxTxS = jnp.einsum("btnd,bsnd->bnts", source_BxTxNxD.astype(s_BxNxTxS.dtype),
                              v_BxSxNxD.astype(s_BxNxTxS.dtype))
  allowed, row_has_key = _row_allowed(s_BxNxTxS.shape, mask)
  logits = jnp.where(allowed, s_BxNxTxS + source_BxNxTxS, -jnp.inf)
  lse_BxNxT = jax.nn.logsumexp(jnp.where(row_has_key, logits, 0.0), axis=-1)
  return jnp.sum(jnp.where(row_has_key[..., 0], lse_BxNxT, 0.0))


def hopfield_energy(state_BxTxNxD, k_BxSxNxD, *, beta, mask=None, separation="softmax",
                    separation_param=None):
  """E(ξ) = −β⁻¹ L(β K ξ) + ½‖ξ‖² per query, [B, T, N] (Ramsauer's energy for softmax,
  up to constants)."""
  u_BxNxTxS = attention.attention_scores(state_BxTxNxD, k_BxSxNxD, beta)
  l_BxNxT = lagrangian(u_BxNxTxS, separation=separation, separation_param=separation_param,
                       mask=mask)
  state = state_BxTxNxD.astype(u_BxNxTxS.dtype)
  return 0.5 * jnp.sum(state ** 2, -1) - jnp.transpose(l_BxNxT, (0, 2, 1)) / beta


def hopfield_update(state_BxTxNxD, k_BxSxNxD, *, beta, mask=None, separation="softmax",
                    separation_param=None):
  """One update ξ ← Kᵀ sep(β K ξ) = ξ − ∂E/∂ξ, [B, T, N, D] in float32 (or wider)."""
  u_BxNxTxS = attention.attention_scores(state_BxTxNxD, k_BxSxNxD, beta)
  w_BxNxTxS = separate(u_BxNxTxS, separation=separation, separation_param=separation_param,
                       mask=mask)
  return jnp.einsum("bnts,bsnd->btnd", w_BxNxTxS, k_BxSxNxD.astype(w_BxNxTxS.dtype))


def _check_steps(steps):
  if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
    raise ValueError(f"steps={steps!r}; allowed: a Python int >= 0")


def hopfield_retrieve(q_BxTxNxD, k_BxSxNxD, v_BxSxNxD, *, steps, beta=None, mask=None,
                      separation="softmax", separation_param=None):
  """ξ⁰ = q; ξ ← Kᵀ sep(β K ξ) `steps` times; out = sep(β K ξ)ᵀ V, [B, T, N, D].

  β defaults to 1/√D; `mask` broadcastable to [B, N, T, S] as in attention.py. A fixed
  step count (a static int) keeps jit, vmap and grad working; steps = 0 with softmax
  is attention.dot_product_attention exactly.
  """
  _check_steps(steps)
  resolve_separation(separation, separation_param)
  beta = q_BxTxNxD.shape[-1] ** -0.5 if beta is None else beta
  options = dict(beta=beta, mask=mask, separation=separation,
                 separation_param=separation_param)
  state_BxTxNxD = q_BxTxNxD
  if steps:
    state_BxTxNxD = jax.lax.fori_loop(
        0, steps, lambda _, state: hopfield_update(state, k_BxSxNxD, **options),
        q_BxTxNxD.astype(attention.state_dtype(q_BxTxNxD.dtype)))
  u_BxNxTxS = attention.attention_scores(state_BxTxNxD, k_BxSxNxD, beta)
  w_BxNxTxS = separate(u_BxNxTxS, separation=separation, separation_param=separation_param,
                       mask=mask)
  return jnp.einsum("bnts,bsnd->btnd", w_BxNxTxS.astype(v_BxSxNxD.dtype), v_BxSxNxD)


class Convergence(NamedTuple):
  """What `converge` found, per query [B, T, N] unless stated."""
  fixed_point: jax.Array   # [B, T, N, D]
  steps: jax.Array         # updates applied before ‖Δξ‖ ≤ tol (max_steps if never)
  converged: jax.Array     # bool
  energy_trace: jax.Array  # [max_steps + 1, B, T, N]; E(ξ^i), NaN after the loop stopped
  keys_for_mass: jax.Array  # fewest keys holding WELL_MASS of |weights| at the fixed point
  well_type: jax.Array     # index into WELL_TYPES


def well_types(weights_BxNxTxS, mask=None):
  """(keys holding WELL_MASS of the weight, well type), both [B, T, N].

  single: one key holds 90 %; global: more than half the allowed keys are needed;
  metastable: in between. |weights| are normalised first (cubic and polynomial
  weights need not sum to 1)."""
  allowed, _ = _row_allowed(weights_BxNxTxS.shape, mask)
  mass = jnp.where(allowed, jnp.abs(weights_BxNxTxS), 0.0)
  mass = mass / jnp.maximum(jnp.sum(mass, -1, keepdims=True), jnp.finfo(mass.dtype).tiny)
  cumulative = jnp.cumsum(-jnp.sort(-mass, axis=-1), axis=-1)
  keys = 1 + jnp.sum(cumulative < WELL_MASS, axis=-1)
  keys = jnp.minimum(keys, jnp.sum(allowed, -1))
  kind = jnp.where(keys == 1, 0, jnp.where(2 * keys > jnp.sum(allowed, -1), 2, 1))
  return jnp.transpose(keys, (0, 2, 1)), jnp.transpose(kind, (0, 2, 1))


def converge(q_BxTxNxD, k_BxSxNxD, *, beta=None, mask=None, separation="softmax",
             separation_param=None, tol=1e-4, max_steps=100):
  """Iterate each query until ‖Δξ‖ ≤ tol (then it stays put) or max_steps; for
  analysis only (a while_loop is not reverse-differentiable)."""
  resolve_separation(separation, separation_param)
  _check_steps(max_steps)
  beta = q_BxTxNxD.shape[-1] ** -0.5 if beta is None else beta
  options = dict(beta=beta, mask=mask, separation=separation,
                 separation_param=separation_param)
  k_BxSxNxD = jax.lax.stop_gradient(k_BxSxNxD)
  state0 = jax.lax.stop_gradient(q_BxTxNxD).astype(attention.state_dtype(q_BxTxNxD.dtype))
  energy0 = hopfield_energy(state0, k_BxSxNxD, **options)
  trace = jnp.full((max_steps + 1,) + energy0.shape, jnp.nan, energy0.dtype).at[0].set(energy0)
  done0 = jnp.zeros(energy0.shape, jnp.bool_)

  def unfinished(carry):
    step, _, done, _, _ = carry
    return (step < max_steps) & ~jnp.all(done)

  def advance(carry):
    step, state, done, steps, trace = carry
    new = hopfield_update(state, k_BxSxNxD, **options)
    new = jnp.where(done[..., None], state, new)
    steps = steps + (~done).astype(steps.dtype)
    done = done | (jnp.linalg.norm(new - state, axis=-1) <= tol)
    trace = trace.at[step + 1].set(hopfield_energy(new, k_BxSxNxD, **options))
    return step + 1, new, done, steps, trace

  _, state, done, steps, trace = jax.lax.while_loop(
      unfinished, advance, (0, state0, done0, jnp.zeros(energy0.shape, jnp.int32), trace))
  u_BxNxTxS = attention.attention_scores(state, k_BxSxNxD, beta)
  weights = separate(u_BxNxTxS, separation=separation, separation_param=separation_param,
                     mask=mask)
  keys, kind = well_types(weights, mask)
  return Convergence(state, steps, done, trace, keys, kind)


def retrieve_from_logits(logits_BxNxTxS, k_BxSxNxD, v_BxSxNxD, *, steps, beta, mask=None,
                         separation="softmax", separation_param=None):
  """Retrieval whose step-0 logits are given instead of β K q: with MHA's H_n
  (`attention.kind="hopfield"` with `energy_steps` > 0, a combination neither paper
  claims). ξ¹ = Kᵀ sep(logits), then the remaining `steps` − 1 updates and the
  readout of `hopfield_retrieve`; steps = 0 reads sep(logits)ᵀ V directly."""
  _check_steps(steps)
  options = dict(mask=mask, separation=separation, separation_param=separation_param)
  w_BxNxTxS = separate(logits_BxNxTxS, **options)
  if not steps:
    return jnp.einsum("bnts,bsnd->btnd", w_BxNxTxS.astype(v_BxSxNxD.dtype), v_BxSxNxD)
  state_BxTxNxD = jnp.einsum("bnts,bsnd->btnd", w_BxNxTxS, k_BxSxNxD.astype(w_BxNxTxS.dtype))
  return hopfield_retrieve(state_BxTxNxD, k_BxSxNxD, v_BxSxNxD, steps=steps - 1, beta=beta,
                           **options)
