"""implementation="layerwise" through the layer stack equals the materialised
(naive) stack: outputs, every layer's H (intermediates), and gradients with
respect to the parameters, the input and α′ (an `OVERRIDES` value), ≤ 1e-5, in
Pallas interpret mode (the kernel tiles the 8-token sequence whole); both h0
policies, reset_every, a window with its bound, scanned and unscanned, remat.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import attention, kernels
from mha_jax.kernels import factorized, layerwise_stack
from mha_jax.models import layers, stack_config

B, T, WIDTH, HEADS, DEPTH = 2, 8, 16, 2, 3
TOL = 1e-5


def config(implementation, **kw):
  stack_kw = {k: kw.pop(k) for k in ("scan_layers", "remat_policy", "dropout", "causal")
              if k in kw}
  att = stack_config.AttentionConfig(kind="hopfield", alpha=0.5, alpha_hidden=0.4,
                                     implementation=implementation, **kw)
  return stack_config.StackConfig(num_layers=DEPTH, width=WIDTH, num_heads=HEADS, mlp_dim=32,
                                  attention=att, **stack_kw)


def stack_and_inputs(**kw):
  x = jax.random.normal(jax.random.key(0), (B, T, WIDTH))
  valid_BxT = jnp.arange(T)[None] < jnp.array([[T], [6]])
  mask = attention.causal_mask(T) & attention.padding_mask(valid_BxT)
  params = layers.LayerStack(config("naive", **kw)).init(jax.random.key(1), x, mask)["params"]
  # Perturb the layer norms so each layer differs from the others.
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
  return x, mask, params


def value_and_grads(implementation, x, mask, params, **kw):
  stack = layers.LayerStack(config(implementation, **kw))

  def loss(params, x, alpha_hidden):
    variables = {"params": params, layers.OVERRIDES: {"alpha_hidden": alpha_hidden}}
    out, inter = stack.apply(variables, x, mask, return_intermediates=True)
    return jnp.sum(jnp.sin(out)), (out, inter["hidden_state"])

  grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  (_, aux), grads = jax.jit(grad)(params, x, jnp.float32(0.4))
  return aux, grads


def assert_close(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=TOL, rtol=0)


@pytest.mark.parametrize("kw", [dict(), dict(h0="first_scores", reset_every=2),
                                dict(scan_layers=False), dict(remat_policy="full")])
def test_layerwise_stack_equals_naive(kw):
  x, mask, params = stack_and_inputs(**{k: v for k, v in kw.items()
                                        if k in ("scan_layers",)})
  (out, hs), grads = value_and_grads("layerwise", x, mask, params, **kw)
  (out_ref, hs_ref), grads_ref = value_and_grads("naive", x, mask, params, **kw)
  assert hs.shape == (DEPTH, B, HEADS, T, T)
  assert_close((out, hs * mask, grads), (out_ref, hs_ref * mask, grads_ref))
  assert abs(float(grads[2])) > 1e-3   # d/dα′ is exercised, not trivially zero


def test_a_causal_stack_tells_the_kernels(monkeypatch):
  """StackConfig.causal (GPT, LLaMA set it): without a mask the stack is causal, equal
  to the naive stack given the causal mask, and both passes' kernels are told so
  (they then skip the tiles above the diagonal)."""
  told = []
  options = layerwise_stack._options
  monkeypatch.setattr(layerwise_stack, "_options", lambda *a: told.append(a[-1]) or options(*a))
  x, _, params = stack_and_inputs()
  (out, hs), grads = value_and_grads("layerwise", x, None, params, causal=True)
  (out_ref, hs_ref), grads_ref = value_and_grads("naive", x, attention.causal_mask(T), params)
  assert_close((out, hs * attention.causal_mask(T), grads),
               (out_ref, hs_ref * attention.causal_mask(T), grads_ref))
  assert told and all(told)


def kernel_calls(jaxpr, counts):
  """counts[kernel name] += 1 per pallas_call in `jaxpr` and the jaxprs inside it."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      counts[eqn.params["name"]] = counts.get(eqn.params["name"], 0) + 1
      continue
    for param in eqn.params.values():
      for inner in param if isinstance(param, (tuple, list)) else (param,):
        inner = getattr(inner, "jaxpr", inner)
        if hasattr(inner, "eqns"):
          kernel_calls(inner, counts)
  return counts


@pytest.mark.parametrize("causal", [False, True])
def test_lengths_without_a_power_of_two_tile_are_padded(causal):
  """T = 12 (no power-of-two tile divides it: Triton could not tile it): the
  buffers are 16 long, the appended keys masked out, and values, H rows and
  gradients equal naive's over the 12 real tokens, kept outputs too."""
  length = 12
  assert layerwise_stack.padded_length(length) == 16
  x = jax.random.normal(jax.random.key(3), (B, length, WIDTH))
  mask = attention.causal_mask(length) if causal else None
  params = layers.LayerStack(config("naive")).init(jax.random.key(1), x, mask)["params"]
  got = [value_and_grads("layerwise", x, None if causal else mask, params, causal=causal,
                         layerwise_keep_outputs=keep) for keep in (False, True)]
  ref = value_and_grads("naive", x, mask, params)
  for (out, hs), grads in got:
    assert hs.shape == (DEPTH, B, HEADS, length, length)
    visible = 1.0 if mask is None else mask
    for a, b in zip(jax.tree.leaves((out, hs * visible, grads)),
                    jax.tree.leaves((ref[0][0], ref[0][1] * visible, ref[1]))):
      # unperturbed layer norms: gradients up to ~40, float32 rounding ~1e-5 relative
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=TOL, rtol=3e-5)


@pytest.mark.parametrize("keep", [False, True])
def test_the_stack_lowers_for_cuda_at_such_a_length(keep):
  """The GPU branch (Triton kernels, which need power-of-two arrays) of a causal
  stack's gradient at T = 12 lowers for CUDA on this CPU host (before the
  padding: "requires … a power of 2 … shape (12, 8)")."""
  from jax import export
  x = jax.random.normal(jax.random.key(3), (B, 12, WIDTH))
  params = layers.LayerStack(config("naive")).init(jax.random.key(1), x)["params"]
  stack = layers.LayerStack(config("layerwise", causal=True, layerwise_keep_outputs=keep))
  loss = lambda params: jnp.sum(stack.apply({"params": params}, x)[0])
  exported = export.export(
      jax.jit(jax.grad(loss)), platforms=["cuda"],
      disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(params)
  module = exported.mlir_module()
  for kernel in ("forward", "dq", "dkv"):
    assert f'name = "layerwise_triton_{kernel}_kernel"' in module


def test_kept_outputs_equal_naive_in_their_lane_dense_layout(monkeypatch):
  """layerwise_keep_outputs: the replay's values and gradients are the collect
  pass's outputs, stored [T·D/lanes, lanes] (16 lanes here, so that D = 8 packs)."""
  lane_dense = layerwise_stack._lane_dense
  monkeypatch.setattr(layerwise_stack, "_lane_dense", lambda t, d: lane_dense(t, d, lanes=16))
  assert layerwise_stack._lane_dense(T, WIDTH // HEADS) == (T * WIDTH // HEADS // 16, 16)
  x, mask, params = stack_and_inputs()
  kw = dict(remat_policy="full", h0="first_scores", reset_every=2)
  (out, hs), grads = value_and_grads("layerwise", x, mask, params, layerwise_keep_outputs=True,
                                     **kw)
  (out_ref, hs_ref), grads_ref = value_and_grads("naive", x, mask, params, **kw)
  assert_close((out, hs * mask, grads), (out_ref, hs_ref * mask, grads_ref))


@pytest.mark.parametrize("remat_policy", ["none", "full"])
def test_kept_outputs_spare_the_replays_forward_kernels(remat_policy):
  """With layerwise_keep_outputs the replay reuses the collect pass's attention
  output and lse: under a gradient the scanned stack holds one forward kernel
  (the collect's), with or without remat, and one pair of backward kernels, per
  platform branch (CPU interpret and TPU: Mosaic; CUDA: Triton); without, the
  replay reruns its forward kernel."""
  x, mask, params = stack_and_inputs()

  def forward_kernels(keep):
    stack = layers.LayerStack(config("layerwise", scan_layers=True, remat_policy=remat_policy,
                                     layerwise_keep_outputs=keep))
    loss = lambda params: jnp.sum(jnp.sin(stack.apply({"params": params}, x, mask)[0]))
    return kernel_calls(jax.make_jaxpr(jax.grad(loss))(params).jaxpr, {})

  assert forward_kernels(True) == {
      "layerwise_forward_kernel": 2, "layerwise_dq_kernel": 2, "layerwise_dkv_kernel": 2,
      "layerwise_triton_forward_kernel": 1, "layerwise_triton_dq_kernel": 1,
      "layerwise_triton_dkv_kernel": 1}
  assert forward_kernels(False)["layerwise_forward_kernel"] >= 4


def test_alpha_hidden_gradient_matches_finite_differences():
  x, mask, params = stack_and_inputs()
  stack = layers.LayerStack(config("layerwise"))

  def loss(alpha_hidden):
    variables = {"params": params, layers.OVERRIDES: {"alpha_hidden": alpha_hidden}}
    return jnp.sum(jnp.sin(stack.apply(variables, x, mask)[0]))

  grad = jax.jit(jax.grad(loss))(jnp.float32(0.4))
  eps = 1e-2
  fd = (jax.jit(loss)(jnp.float32(0.4 + eps)) - jax.jit(loss)(jnp.float32(0.4 - eps))) / (2 * eps)
  np.testing.assert_allclose(grad, fd, rtol=5e-3, atol=5e-3)


def test_weight_matrix_is_the_closed_form_of_the_recursion():
  for h0, reset_every in (("zeros", 0), ("first_scores", 2), ("zeros", 3)):
    ref = factorized.layer_weights(5, 0.3, h0=h0, reset_every=reset_every)
    got = layerwise_stack.weight_matrix(0.3, 5, h0=h0, reset_every=reset_every)
    np.testing.assert_allclose(got, ref, atol=1e-7)
  windowed = layerwise_stack.weight_matrix(0.3, 5, window=2)
  ref = np.tril(np.triu(factorized.layer_weights(5, 0.3), -1))
  np.testing.assert_allclose(windowed, ref, atol=1e-7)


def test_window_output_stays_within_its_bound():
  """W = 1: layer 2 (same input as naive: layer 1 is exact) drops α′·H_1, so
  |ΔH_2| ≤ ε = α′ · max|s_1| (factorized.window_error_bound) and it is not 0."""
  x, mask, params = stack_and_inputs()
  (_, hs_ref), _ = value_and_grads("naive", x, mask, params)
  (_, hs_w), _ = value_and_grads("layerwise", x, mask, params, hidden_window=1)
  np.testing.assert_allclose(hs_w[0] * mask, hs_ref[0] * mask, atol=TOL)
  sigma = float(jnp.max(jnp.abs(hs_ref[0]) * mask)) / (1 - 0.4)   # H_1 = (1−α′) s_1
  eps, _ = factorized.window_error_bound(0.4, 1, sigma)
  err = float(jnp.max(jnp.abs(hs_w[1] - hs_ref[1]) * mask))
  assert 0 < err <= eps + TOL


def test_auto_picks_layerwise_where_h_is_wider_than_the_features():
  att = config("auto").attention
  assert kernels.resolve(att, 4, 1, 64, 1, 16) == "naive"
  assert kernels.resolve(att, 4, 1, 65, 1, 16) == "layerwise"
  assert kernels.resolve(att, 4, 1, 65, 1, 16, decode=True) == "naive"
  assert kernels.resolve(config("layerwise").attention, 4, 1, 8, 1, 16, decode=True) == "naive"


def test_training_dropout_masks_agree_between_the_passes():
  """With dropout in training, the collect and replay passes must draw the same
  masks, else the replay's gradients are those of another network: d/dα′ matches
  finite differences of the same (fixed-key) loss."""
  x, mask, params = stack_and_inputs()
  stack = layers.LayerStack(config("layerwise", dropout=0.3))

  def loss(alpha_hidden):
    variables = {"params": params, layers.OVERRIDES: {"alpha_hidden": alpha_hidden}}
    out = stack.apply(variables, x, mask, deterministic=False,
                      rngs={"dropout": jax.random.key(3)})[0]
    return jnp.sum(jnp.sin(out))

  grad = jax.jit(jax.grad(loss))(jnp.float32(0.4))
  eps = 1e-2
  fd = (jax.jit(loss)(jnp.float32(0.4 + eps)) - jax.jit(loss)(jnp.float32(0.4 - eps))) / (2 * eps)
  np.testing.assert_allclose(grad, fd, rtol=5e-3, atol=5e-3)
