"""d/dα′ and d/dα for every MHA implementation: against the materialised (naive)
gradient and against central finite differences.

Single layers: a 3-layer chain of `hopfield_attention` calls on fixed q, k, v
(a restart at layer 3, both h0 policies), differentiated in α′. The naive chain
also runs in float64 (the attention functions follow their inputs' dtype), which
gives the finite-difference reference: with step 1e-4 its truncation error
(≈ h²/6·|L‴|) and rounding (≈ 1e-16·|L|/h) are both far below the float32
gradients' own rounding, so every float32 gradient must match it to 1e-4 relative.

Whole model: a 3-layer `LayerStack` whose α and α′ arrive as arrays through the
`OVERRIDES` collection, differentiated in both. The models compute in float32
only, so the finite difference is float32 too, with step h = 1e-3 on a loss that
is a mean of sines (|L| ≤ 1): rounding ≈ 2⁻²³·|L|/h ≈ 1e-4 absolute at most;
truncation h²/6·|L‴| ≈ 2e-5 (|L‴| ≈ 100 here: the h = 1e-2 quotient is 1.8 %
off), so atol 2e-4 + rtol 1e-3. Against the naive gradient the tolerance is
float32 summation-order noise, 1e-4 relative; a dropped term (the defect this
guards: 34.9 instead of 16.0 in a tiny case) is off by far more.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import attention, kernels
from mha_jax.kernels import factorized, fused
from mha_jax.models import layers, stack_config
from mha_jax.train import sharding

B, T, N, D = 2, 16, 2, 4
ALPHA_HIDDEN = 0.4
RESTARTS = (True, False, True)


def layer_inputs():
  keys = jax.random.split(jax.random.key(3), 3)
  return tuple(np.asarray(jax.random.normal(k, (len(RESTARTS), B, T, N, D), jnp.float32))
               for k in keys)


def mask():
  valid_BxT = jnp.arange(T)[None] < jnp.array([[T], [11]])
  return attention.causal_mask(T) & attention.padding_mask(valid_BxT)


def one_layer(implementation, q, k, v, carry, alpha_hidden, restart, h0):
  """(out, H_n, next carry) of one layer by `implementation`."""
  common = dict(alpha_hidden=alpha_hidden, restart=restart, h0=h0, mask=mask())
  if implementation == "naive":
    out, h = attention.hopfield_attention(q, k, v, carry, **common)
    return out, h, h
  if implementation == "factorized":
    out, state = factorized.factorized_hopfield_attention(q, k, v, carry, **common)
    return out, factorized.hidden_state(state), state
  out, h = fused.fused_hopfield_attention(q, k, v, carry, block=8, **common)
  return out, h, h


def chain_loss(alpha_hidden, qkv, implementation, h0):
  carry = None
  if implementation == "factorized":
    carry = factorized.initial_state(B, T, N, D, len(RESTARTS), qkv[0].dtype)
  loss = 0.0
  for n, restart in enumerate(RESTARTS):
    out, h, carry = one_layer(implementation, *(x[n] for x in qkv), carry, alpha_hidden,
                              restart, h0)
    loss = loss + jnp.sum(jnp.sin(out)) + 0.1 * jnp.sum(jnp.cos(h) * mask())
  return loss


def central_difference(fn, x, step):
  return (fn(x + step) - fn(x - step)) / (2 * step)


@pytest.mark.parametrize("h0", ["zeros", "first_scores"])
def test_single_layer_alpha_hidden_gradient(h0):
  qkv = layer_inputs()
  with jax.enable_x64(True):
    qkv64 = tuple(jnp.asarray(x, jnp.float64) for x in qkv)
    reference = float(central_difference(
        lambda a: chain_loss(a, qkv64, "naive", h0), jnp.float64(ALPHA_HIDDEN), 1e-4))
  for implementation in ("naive", "factorized", "fused"):
    grad = jax.jit(jax.grad(chain_loss), static_argnums=(2, 3))(
        jnp.float32(ALPHA_HIDDEN), qkv, implementation, h0)
    np.testing.assert_allclose(float(grad), reference, rtol=1e-4, err_msg=implementation)


def test_fused_without_a_previous_state_starts_the_chain():
  """h_prev=None is a chain start: H_1 = s_1 under h0="first_scores", as naive."""
  q, k, v = (jnp.asarray(x[0]) for x in layer_inputs())
  for h0 in ("zeros", "first_scores"):
    out, h = attention.hopfield_attention(q, k, v, None, alpha_hidden=ALPHA_HIDDEN, h0=h0)
    out_f, h_f = fused.fused_hopfield_attention(q, k, v, None, alpha_hidden=ALPHA_HIDDEN, h0=h0,
                                                block=8)
    np.testing.assert_allclose(h_f, h, atol=1e-5, err_msg=h0)
    np.testing.assert_allclose(out_f, out, atol=1e-5, err_msg=h0)
  np.testing.assert_allclose(h_f, attention.attention_scores(q, k), atol=1e-5)


# Width 8 over 4 heads: head dim 2, so `auto` at T=8 > 3 layers × 2 takes the factorised path.
MODEL = dict(num_layers=3, width=8, num_heads=4, mlp_dim=16)
MODEL_T = 8


def model_loss(alphas, implementation, params, x):
  cfg = stack_config.StackConfig(**MODEL, attention=stack_config.AttentionConfig(
      kind="hopfield", implementation=implementation, reset_every=2))
  variables = {"params": params, layers.OVERRIDES: {"alpha": alphas[0],
                                                    "alpha_hidden": alphas[1]}}
  out, _ = layers.LayerStack(cfg).apply(variables, x, attention.causal_mask(MODEL_T))
  return jnp.mean(jnp.sin(3 * out))


@pytest.fixture(scope="module")
def model_inputs():
  """(α, α′), parameters, input and the naive gradient, shared by the implementations
  (their parameters are the same: the implementation changes no variable)."""
  cfg = stack_config.StackConfig(**MODEL, attention=stack_config.AttentionConfig(
      kind="hopfield"))
  x = jax.random.normal(jax.random.key(0), (2, MODEL_T, MODEL["width"]))
  params = layers.LayerStack(cfg).init(jax.random.key(1), x)["params"]
  alphas = jnp.array([0.6, ALPHA_HIDDEN], jnp.float32)
  return alphas, params, x, jax.grad(model_loss)(alphas, "naive", params, x)


@pytest.mark.parametrize("implementation", ["naive", "factorized", "fused", "auto"])
def test_model_alpha_gradients(implementation, model_inputs):
  alphas, params, x, naive_grad = model_inputs
  if implementation == "auto":
    att = stack_config.AttentionConfig(kind="hopfield", implementation="auto")
    assert kernels.resolve(att, MODEL["num_layers"], 1, MODEL_T, MODEL["num_heads"],
                           MODEL["width"] // MODEL["num_heads"]) == "layerwise"
  grad = jax.jit(jax.grad(model_loss), static_argnums=(1,))(alphas, implementation, params, x)
  np.testing.assert_allclose(grad, naive_grad, rtol=1e-4, atol=1e-6)
  loss = jax.jit(model_loss, static_argnums=(1,))
  for i in range(2):
    step = jnp.zeros(2).at[i].set(1e-3)
    numeric = (loss(alphas + step, implementation, params, x)
               - loss(alphas - step, implementation, params, x)) / 2e-3
    np.testing.assert_allclose(grad[i], numeric, rtol=1e-3, atol=2e-4, err_msg=f"α index {i}")


def test_fused_alpha_gradient_sums_over_shards(model_inputs):
  """Batch and heads split over 8 devices: the kernel runs per shard inside
  shard_map, and each shard's dα′ is a partial sum that must be added up."""
  alphas, params, x, naive_grad = model_inputs
  mesh = sharding.make_mesh(dict(data=2, fsdp=1, tensor=4))
  assert mesh.size == 8
  with sharding.step_context(mesh, sharding.DEFAULT_RULES):
    grad = jax.jit(jax.grad(model_loss), static_argnums=(1,))(alphas, "fused", params, x)
  np.testing.assert_allclose(grad, naive_grad, rtol=1e-4, atol=1e-6)
