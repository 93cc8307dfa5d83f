"""Analysis measures against naive loops."""

import jax
import jax.numpy as jnp
import numpy as np

from mha_jax import analysis


def test_rank_residual_matches_naive_and_vanishes_for_equal_tokens():
  x = np.asarray(jax.random.normal(jax.random.key(0), (3, 5, 4)), np.float64)
  for b in range(3):
    res = x[b] - x[b].mean(0)
    norm = lambda m: np.sqrt(np.abs(m).sum(0).max() * np.abs(m).sum(1).max())
    np.testing.assert_allclose(analysis.relative_rank_residual(jnp.asarray(x))[b],
                               norm(res) / norm(x[b]), rtol=1e-5)
  equal_tokens = jnp.broadcast_to(jnp.arange(4.0), (2, 5, 4))
  np.testing.assert_allclose(analysis.relative_rank_residual(equal_tokens), 0.0, atol=1e-7)


def test_pairwise_cosine_matches_loop_and_drops_padding():
  x = np.asarray(jax.random.normal(jax.random.key(1), (2, 4, 3)), np.float64)
  valid = np.array([[True] * 4, [True, True, True, False]])
  expected = [x[b, i] @ x[b, j] / np.linalg.norm(x[b, i]) / np.linalg.norm(x[b, j])
              for b in range(2) for i in range(4) for j in range(i + 1, 4) if valid[b, j]]
  np.testing.assert_allclose(analysis.pairwise_token_cosine(x, valid), expected, rtol=1e-12)
  stats = analysis.summarize(np.array([0.95, 0.5, 1.0, 0.0]))
  assert stats["frac_above_0.9"] == 0.5 and stats["count"] == 4


def test_attention_only_network_is_the_dong_et_al_network_at_zero_alpha_hidden():
  layers_, batch, length, width = 3, 2, 5, 4
  w = np.asarray(jax.random.normal(jax.random.key(2), (layers_, 3, width, width)), np.float64)
  x = np.asarray(jax.random.normal(jax.random.key(3), (batch, length, width)), np.float64)
  xs = analysis.attention_only_network(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                                       alpha_hidden=0.0)
  for n in range(layers_):
    s = (x @ w[n, 0]) @ np.swapaxes(x @ w[n, 1], 1, 2) / np.sqrt(width)
    a = np.exp(s - s.max(-1, keepdims=True))
    x = (a / a.sum(-1, keepdims=True)) @ (x @ w[n, 2])
    np.testing.assert_allclose(xs[n], x, rtol=1e-4, atol=1e-5)
