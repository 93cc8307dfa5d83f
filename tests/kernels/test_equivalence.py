"""Factorised and fused MHA equal the materialised reference, layer chain by
layer chain: outputs, hidden states and gradients (float32, ≤ 1e-5), for several
depths, both h0 policies, reset_every, and a causal + padded mask; a truncated
window stays inside its stated bound.

The chain runs `depth` layers on fixed per-layer q, k, v (the model stack's
carry, without the projections in between), so every check compares the same
inputs. The fused kernel runs in Pallas interpret mode with 8×8 tiles, so a
16-token sequence crosses tile borders in both directions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import attention
from mha_jax.kernels import factorized, fused

B, T, N, D = 2, 16, 2, 4
ALPHA_HIDDEN = 0.4
TOL = 1e-5


def layer_inputs(depth, seed=0):
  keys = jax.random.split(jax.random.key(seed), 3)
  return tuple(jax.random.normal(k, (depth, B, T, N, D)) for k in keys)


def causal_padded_mask():
  valid_BxT = jnp.arange(T)[None] < jnp.array([[T], [11]])
  return attention.causal_mask(T) & attention.padding_mask(valid_BxT)


def naive_chain(qkv, restarts, h0, mask):
  h, outs, hs = None, [], []
  for n, restart in enumerate(restarts):
    out, h = attention.hopfield_attention(*(x[n] for x in qkv), h, alpha_hidden=ALPHA_HIDDEN,
                                          mask=mask, h0=h0, restart=restart)
    outs.append(out)
    hs.append(h)
  return jnp.stack(outs), jnp.stack(hs)


def factorized_chain(qkv, restarts, h0, mask, slots=None):
  depth = len(restarts)
  state = factorized.initial_state(B, T, N, D, slots or depth, jnp.float32)
  outs, hs = [], []
  for n, restart in enumerate(restarts):
    out, state = factorized.factorized_hopfield_attention(
        *(x[n] for x in qkv), state, alpha_hidden=ALPHA_HIDDEN, mask=mask, h0=h0,
        restart=restart)
    outs.append(out)
    hs.append(factorized.hidden_state(state))
  return jnp.stack(outs), jnp.stack(hs)


def fused_chain(qkv, restarts, h0, mask, hidden_dtype=jnp.float32):
  h, outs, hs = jnp.zeros((B, N, T, T), hidden_dtype), [], []
  for n, restart in enumerate(restarts):
    out, h = fused.fused_hopfield_attention(*(x[n] for x in qkv), h, alpha_hidden=ALPHA_HIDDEN,
                                            mask=mask, h0=h0, restart=restart, block=8,
                                            hidden_dtype=hidden_dtype)
    outs.append(out)
    hs.append(h)
  return jnp.stack(outs), jnp.stack(hs)


def value_and_grads(chain, qkv, restarts, h0, mask):
  """(outputs, H's) and d/d(q, k, v) of a loss that reads both, so the H
  cotangent path (dH_n into layer n+1) is exercised too."""
  def loss(qkv):
    outs, hs = chain(qkv, restarts, h0, mask)
    return jnp.sum(jnp.sin(outs)) + 0.1 * jnp.sum(jnp.cos(hs) * mask), (outs, hs)
  (_, (outs, hs)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(qkv)
  return outs, hs, grads


def restart_pattern(depth, reset_every):
  return tuple(bool(r) for r in attention.restart_flags(depth, reset_every=reset_every))


def assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), atol=TOL,
                               rtol=0)


@pytest.mark.parametrize("depth,h0,reset_every", [
    (1, "zeros", 0), (3, "first_scores", 0), (5, "zeros", 2), (4, "first_scores", 3)])
def test_factorized_equals_naive(depth, h0, reset_every):
  qkv, mask = layer_inputs(depth), causal_padded_mask()
  restarts = restart_pattern(depth, reset_every)
  assert_close(value_and_grads(factorized_chain, qkv, restarts, h0, mask),
               value_and_grads(naive_chain, qkv, restarts, h0, mask))


@pytest.mark.parametrize("h0", ["zeros", "first_scores"])
def test_fused_equals_naive(h0):
  """Depth 3 with a restart at layer 3 (reset_every=2): both update rules, both starts."""
  qkv, mask, restarts = layer_inputs(3), causal_padded_mask(), restart_pattern(3, 2)
  assert_close(value_and_grads(fused_chain, qkv, restarts, h0, mask),
               value_and_grads(naive_chain, qkv, restarts, h0, mask))


def test_fused_bfloat16_hidden_state_within_its_rounding_bound():
  qkv, mask, restarts = layer_inputs(2), causal_padded_mask(), restart_pattern(2, 0)
  outs, hs = naive_chain(qkv, restarts, "zeros", mask)
  outs16, hs16 = fused_chain(qkv, restarts, "zeros", mask, hidden_dtype=jnp.bfloat16)
  assert hs16.dtype == jnp.bfloat16
  # Layer 1 stores round(H_1); layer 2 adds α′·(that rounding) to its own: ≤ (1+α′)·2⁻⁸|H|.
  bound = (1 + ALPHA_HIDDEN) * 2.0 ** -8 * float(jnp.abs(hs).max())
  assert float(jnp.abs(hs16.astype(jnp.float32) - hs).max()) <= bound
  eps = bound
  assert float(jnp.abs(outs16 - outs).max()) <= np.expm1(2 * eps) * float(jnp.abs(qkv[2]).max())


def test_layer_weights_are_the_closed_form_of_the_recursion():
  depth, reset_every = 5, 3
  qkv = layer_inputs(depth)
  restarts = restart_pattern(depth, reset_every)
  for h0 in ("zeros", "first_scores"):
    _, hs = naive_chain(qkv, restarts, h0, None)
    w = factorized.layer_weights(depth, ALPHA_HIDDEN, h0=h0, reset_every=reset_every)
    scores = jnp.stack([attention.attention_scores(qkv[0][n], qkv[1][n]) for n in range(depth)])
    np.testing.assert_allclose(jnp.einsum("nl,lbhts->nbhts", w, scores), hs, atol=TOL)


def test_truncated_window_stays_within_its_bound():
  depth, window = 6, 2
  qkv, mask = layer_inputs(depth, seed=1), causal_padded_mask()
  restarts = restart_pattern(depth, 0)
  outs, hs = naive_chain(qkv, restarts, "zeros", mask)
  outs_w, hs_w = factorized_chain(qkv, restarts, "zeros", mask, slots=window)
  scores = [attention.attention_scores(qkv[0][n], qkv[1][n]) for n in range(depth)]
  v_max = float(jnp.abs(qkv[2]).max())
  for n in range(depth):
    sigma = max([float(jnp.abs(s).max()) for s in scores[:n + 1 - window]], default=0.0)
    eps, row_l1 = factorized.window_error_bound(ALPHA_HIDDEN, window, sigma)
    err_h = float(jnp.abs(hs_w[n] - hs[n]).max())
    assert err_h <= eps + TOL
    assert float(jnp.abs(outs_w[n] - outs[n]).max()) <= row_l1 * v_max + TOL
    if n >= window:
      assert err_h > 0   # the window really dropped something
