"""The MHA maths against a literal NumPy reading of spec §2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import attention


def np_softmax(logits, mask):
  logits = np.where(mask, logits, -np.inf)
  logits = logits - logits.max(-1, keepdims=True)
  e = np.exp(logits)
  return e / e.sum(-1, keepdims=True)


def np_attention_layer(q, k, v, h_prev, alpha_hidden, mask):
  """One layer, literally: s = QKᵀ/√d; H = α′H_prev + (1−α′)s; A = softmax(mask(H)); AV."""
  d = q.shape[-1]
  s = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(d)
  h = alpha_hidden * h_prev + (1 - alpha_hidden) * s
  a = np_softmax(h, mask)
  return np.einsum("bnts,bsnd->btnd", a, v), h


def random_qkv(key, batch=2, length=7, heads=3, head_dim=5, layers=1):
  shape = (layers, 3, batch, length, heads, head_dim)
  return np.asarray(jax.random.normal(jax.random.key(key), shape), np.float64)


@pytest.mark.parametrize("causal", [False, True])
def test_alpha_hidden_zero_is_naive_softmax_attention(causal):
  q, k, v = random_qkv(0)[0]
  length = q.shape[1]
  mask = np.tril(np.ones((length, length), bool)) if causal else np.ones((length, length), bool)
  expected = np.einsum("bnts,bsnd->btnd",
                       np_softmax(np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(q.shape[-1]), mask), v)
  out, h = attention.hopfield_attention(
      jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), jnp.asarray(v, jnp.float32),
      None, alpha_hidden=0.0, mask=jnp.asarray(mask) if causal else None)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  assert h.dtype == jnp.float32 and h.shape == (2, 3, length, length)
  np.testing.assert_allclose(
      attention.dot_product_attention(*(jnp.asarray(a, jnp.float32) for a in (q, k, v)),
                                      mask=jnp.asarray(mask)), expected, atol=1e-5)


@pytest.mark.parametrize("h0", ["zeros", "first_scores"])
@pytest.mark.parametrize("causal", [False, True])
def test_four_layer_chain_matches_numpy(h0, causal):
  alpha_hidden, num_layers = 0.7, 4
  qkv = random_qkv(1, layers=num_layers)
  length = qkv.shape[3]
  mask = np.tril(np.ones((length, length), bool)) if causal else np.ones((length, length), bool)

  h_np = None
  h_jax = None
  for layer in range(num_layers):
    q, k, v = qkv[layer]
    if h_np is None:
      s1 = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(q.shape[-1])
      h_np = s1 if h0 == "first_scores" else np.zeros_like(s1)
    out_np, h_np = np_attention_layer(q, k, v, h_np, alpha_hidden, mask)
    out_jax, h_jax = attention.hopfield_attention(
        *(jnp.asarray(a, jnp.float32) for a in (q, k, v)), h_jax, alpha_hidden=alpha_hidden,
        mask=jnp.asarray(mask), h0=h0)
    np.testing.assert_allclose(out_jax, out_np, atol=1e-5)
    np.testing.assert_allclose(h_jax, h_np, atol=1e-5)
  # Masked entries of H stay finite: α′·(−inf) would poison later layers.
  assert np.isfinite(np.asarray(h_jax)).all()


def test_restart_ignores_the_carried_state():
  q, k, v = (jnp.asarray(a, jnp.float32) for a in random_qkv(2)[0])
  garbage = jnp.full((2, 3, 7, 7), 1e3, jnp.float32)
  fresh, h_fresh = attention.hopfield_attention(q, k, v, None, alpha_hidden=0.5)
  restarted, h_restarted = attention.hopfield_attention(q, k, v, garbage, alpha_hidden=0.5,
                                                        restart=jnp.bool_(True))
  np.testing.assert_array_equal(restarted, fresh)
  np.testing.assert_array_equal(h_restarted, h_fresh)


def test_jit_vmap_over_alpha_hidden_and_grad():
  q, k, v = (jnp.asarray(a, jnp.float32) for a in random_qkv(3)[0])
  h_prev = jax.random.normal(jax.random.key(5), (2, 3, 7, 7))
  alphas = jnp.array([0.0, 0.3, 0.7, 1.0])

  def layer(alpha_hidden):
    return attention.hopfield_attention(q, k, v, h_prev, alpha_hidden=alpha_hidden)[0]

  batched = jax.jit(jax.vmap(layer))(alphas)
  for i, a in enumerate(alphas):
    out_np, _ = np_attention_layer(*(np.asarray(t, np.float64) for t in (q, k, v)),
                                   np.asarray(h_prev, np.float64), float(a),
                                   np.ones((7, 7), bool))
    np.testing.assert_allclose(batched[i], out_np, atol=1e-5)

  def loss(q, alpha_hidden):
    out, h = attention.hopfield_attention(q, k, v, h_prev, alpha_hidden=alpha_hidden)
    return jnp.sum(out ** 2) + jnp.sum(h)

  grad_q, grad_alpha = jax.jit(jax.grad(loss, argnums=(0, 1)))(q, 0.4)
  eps = 1e-2  # central difference in float32 along a random direction
  direction = jax.random.normal(jax.random.key(6), q.shape)
  numeric = (loss(q + eps * direction, 0.4) - loss(q - eps * direction, 0.4)) / (2 * eps)
  np.testing.assert_allclose(jnp.vdot(grad_q, direction), numeric, rtol=2e-3)
  numeric_alpha = (loss(q, 0.4 + eps) - loss(q, 0.4 - eps)) / (2 * eps)
  np.testing.assert_allclose(grad_alpha, numeric_alpha, rtol=2e-3)


def test_residual_forms_and_bad_values():
  x, u = jnp.float32(2.0), jnp.float32(10.0)
  assert attention.residual_update(x, u, 0.25, "convex") == 0.25 * 2 + 0.75 * 10
  assert attention.residual_update(x, u, 0.25, "scaled_branch") == 2 + 0.75 * 10
  assert attention.residual_update(x, u, 0.25, "standard") == 12
  with pytest.raises(ValueError, match="'leaky'"):
    attention.residual_update(x, u, 0.25, "leaky")
  with pytest.raises(ValueError, match="'ones'"):
    attention.hopfield_attention(*([jnp.ones((1, 2, 1, 2))] * 3), None, alpha_hidden=0.5,
                                 h0="ones")


def test_fully_masked_row_is_finite():
  q, k, v = (jnp.asarray(a, jnp.float32) for a in random_qkv(7)[0])
  mask = jnp.ones((2, 1, 1, 7), bool).at[1].set(False)
  out, _ = attention.hopfield_attention(q, k, v, None, alpha_hidden=0.5, mask=mask)
  assert np.isfinite(np.asarray(out)).all()
