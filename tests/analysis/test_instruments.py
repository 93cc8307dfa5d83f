"""Instrument options: float64 rank collapse, the exact ‖·‖_{1,∞} minimiser, the
centred cosine, and α / residual form in the attention-only network."""

import jax
import jax.numpy as jnp
import numpy as np

from mha_jax import analysis


def composite(m):
  return np.sqrt(np.abs(m).sum(0).max() * np.abs(m).sum(1).max())


def test_float64_rank_collapse_of_an_exactly_rank1_input_is_below_1e_12():
  with jax.enable_x64(True):
    token = jax.random.normal(jax.random.key(0), (1, 1, 16), jnp.float64)
    x = jnp.broadcast_to(token, (2, 12, 16))
    w = jax.random.normal(jax.random.key(1), (6, 3, 16, 16), jnp.float64) / 4
    for alpha_hidden in (0.0, 0.7):
      xs = analysis.attention_only_network(x, w, alpha_hidden=alpha_hidden)
      assert xs.dtype == jnp.float64
      residual = jax.vmap(analysis.relative_rank_residual)(xs)
      assert residual.dtype == jnp.float64 and float(residual.max()) <= 1e-12


def test_exact_minimiser_is_at_most_the_mean_token_residual_and_above_its_bound():
  rng = np.random.default_rng(0)
  for trial in range(4):
    m = rng.standard_normal((6, 5)) * rng.uniform(0.5, 3, size=5) + rng.standard_normal(5)
    if trial == 3:
      m[0] += 10.0   # an outlier token: the mean is then far from the best x
    exact = analysis.composite_minimum(m)
    mean_token = composite(m - m.mean(0))
    assert exact["value"] <= mean_token + 1e-9
    assert exact["lower_bound"] <= exact["value"] + 1e-9
    # no random x does better than the minimiser found
    xs = m.mean(0) + rng.standard_normal((2000, 5))
    assert min(composite(m - x) for x in xs) >= exact["value"] - 1e-9
  assert exact["value"] < 0.99 * mean_token   # with an outlier the mean is not the minimiser


def test_centred_cosine_removes_a_shared_offset():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((1, 5, 8)) + 20.0     # tokens differ, share a large offset
  raw = analysis.pairwise_token_cosine(x)
  centred = analysis.pairwise_token_cosine(x, centered=True)
  c = x[0] - x[0].mean(0)
  expected = [c[i] @ c[j] / np.linalg.norm(c[i]) / np.linalg.norm(c[j])
              for i in range(5) for j in range(i + 1, 5)]
  np.testing.assert_allclose(centred, expected, rtol=1e-12)
  assert raw.min() > 0.9 and centred.mean() < 0.5


def test_attention_only_network_with_a_residual_form_matches_its_equation():
  x = jax.random.normal(jax.random.key(2), (2, 6, 8))
  w = jax.random.normal(jax.random.key(3), (3, 3, 8, 8)) / 3
  plain = analysis.attention_only_network(x, w, alpha_hidden=0.5)
  convex = analysis.attention_only_network(x, w, alpha_hidden=0.5, alpha=0.3, residual="convex")
  # layer 1 of each: u from the same attention, then x ← αx + (1−α)u
  np.testing.assert_allclose(convex[0], 0.3 * x + 0.7 * plain[0], rtol=1e-5, atol=1e-6)
  # and layer 2 feeds the mixed x forward (a NumPy loop of the whole network)
  h, xn = None, np.asarray(x, np.float64)
  for n in range(3):
    q, k, v = (xn @ np.asarray(w[n, i], np.float64) for i in range(3))
    s = np.einsum("btd,bsd->bts", q, k) / np.sqrt(8)
    h = (0.5 * (np.zeros_like(s) if h is None else h)) + 0.5 * s
    a = np.exp(h - h.max(-1, keepdims=True))
    a /= a.sum(-1, keepdims=True)
    xn = xn + np.einsum("bts,bsd->btd", a, v)    # standard residual
  standard = analysis.attention_only_network(x, w, alpha_hidden=0.5, residual="standard")
  np.testing.assert_allclose(standard[-1], xn, rtol=1e-4, atol=1e-5)

