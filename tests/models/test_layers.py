"""The layer stack: a NumPy loop of the spec's equations, scan vs loop, causality, remat."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import attention
from mha_jax.models import layers, param_layout
from mha_jax.models.stack_config import AttentionConfig, StackConfig

WIDTH, HEADS, MLP, LAYERS, LENGTH, BATCH = 12, 3, 20, 4, 6, 2


def stack_config(**attention_kw):
  return StackConfig(num_layers=LAYERS, width=WIDTH, num_heads=HEADS, mlp_dim=MLP,
                            mlp="gelu_tanh", norm_eps=1e-5, init_std=0.3,
                            attention=AttentionConfig(**attention_kw))


def init_stack(cfg, x, mask=None):
  params = nn.unbox(layers.LayerStack(cfg).init(jax.random.key(0), x, mask))["params"]
  # Non-trivial norm parameters, so the reference must get them right too.
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p + 0.1 * jax.random.normal(jax.random.key(len(str(path))), p.shape)
      if "norm" in str(path) else p, params)


def np_layernorm(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def np_separate(u, mask, separation):
  """Softmax, or sparsemax by sorting (Martins & Astudillo, 2016), over allowed keys."""
  if separation == "softmax":
    logits = np.where(mask, u, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return weights / weights.sum(-1, keepdims=True)
  out = np.zeros_like(u)
  for index in np.ndindex(u.shape[:-1]):
    allowed = np.broadcast_to(mask, u.shape)[index]
    z = u[index][allowed]
    z_sorted = np.sort(z)[::-1]
    cumulative = np.cumsum(z_sorted)
    ks = np.arange(1, z.size + 1)
    support = ks[1 + ks * z_sorted > cumulative].max()
    tau = (cumulative[support - 1] - 1) / support
    out[index][allowed] = np.maximum(z - tau, 0)
  return out


def np_retrieve(q, k, v, mask, steps, separation):
  """ξ ← Kᵀ sep(K ξ / √D) `steps` times from ξ = q, then sep(K ξ / √D)ᵀ V."""
  beta = 1 / np.sqrt(q.shape[-1])
  xi = q
  for _ in range(steps):
    xi = np.einsum("bnts,bsnd->btnd", np_separate(
        beta * np.einsum("btnd,bsnd->bnts", xi, k), mask, separation), k)
  weights = np_separate(beta * np.einsum("btnd,bsnd->bnts", xi, k), mask, separation)
  return np.einsum("bnts,bsnh->btnh", weights, v)


def np_stack(params, x, att, causal, skip=True):
  """Spec §2, line by line, in float64, over the loop-layout parameters."""
  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  length = x.shape[1]
  mask = np.tril(np.ones((length, length), bool)) if causal else np.ones((length, length), bool)
  a, a_h = att.alpha, att.alpha_hidden
  h = None
  for n in range(LAYERS):
    p = p64[f"layers_{n}"]
    y = np_layernorm(x, p["attention_norm"])
    q, k, v = (np.einsum("btd,dnh->btnh", y, p["attention"][name]["kernel"])
               + p["attention"][name]["bias"] for name in ("query", "key", "value"))
    s = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(q.shape[-1])
    if att.kind == "hopfield_energy":
      u = np_retrieve(q, k, v, mask, att.energy_steps, att.separation)
      u = np.einsum("btnh,nhd->btd", u, p["attention"]["out"]["kernel"]) + p["attention"]["out"]["bias"]
      x = x + u
      y = np_layernorm(x, p["mlp_norm"])
      x = x + np_gelu_tanh(y @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]) @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]
      continue
    if h is None:
      h = s if att.h0 == "first_scores" else np.zeros_like(s)
    h = h + s if att.kind == "realformer" else a_h * h + (1 - a_h) * s
    if att.kind == "hopfield" and att.energy_steps:   # H_n as the step-0 logits
      xi = np.einsum("bnts,bsnd->btnd", np_separate(h, mask, att.separation), k)
      u = np_retrieve(xi, k, v, mask, att.energy_steps - 1, att.separation)
    else:
      logits = np.where(mask, h, -np.inf)
      weights = np.exp(logits - logits.max(-1, keepdims=True))
      weights /= weights.sum(-1, keepdims=True)
      u = np.einsum("bnts,bsnh->btnh", weights, v)
    u = np.einsum("btnh,nhd->btd", u, p["attention"]["out"]["kernel"]) + p["attention"]["out"]["bias"]
    if not skip:
      x = u
    elif att.kind == "realformer" or att.residual == "standard":
      x = x + u
    elif att.residual == "convex":
      x = a * x + (1 - a) * u
    else:
      assert att.residual == "scaled_branch", att.residual
      x = x + (1 - a) * u
    y = np_layernorm(x, p["mlp_norm"])
    hidden = np_gelu_tanh(y @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"])
    x = (x if skip else 0) + hidden @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]
  return x, h


@pytest.mark.parametrize("kind,h0,residual", [("hopfield", "zeros", "convex"),
                                              ("hopfield", "first_scores", "scaled_branch"),
                                              ("realformer", "zeros", None)])
@pytest.mark.parametrize("causal", [False, True])
def test_mha_stack_matches_numpy_equations(kind, h0, residual, causal):
  settings = dict(alpha=0.6, alpha_hidden=0.7, h0=h0, residual=residual) \
      if kind == "hopfield" else {}
  cfg = stack_config(kind=kind, **settings)
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, WIDTH))
  mask = attention.causal_mask(LENGTH) if causal else None
  params = init_stack(cfg, x, mask)
  out, per_layer = layers.LayerStack(cfg).apply({"params": params}, x, mask,
                                                return_intermediates=True)
  expected_x, expected_h = np_stack(param_layout.unstack_layer_params(params), np.asarray(x, np.float64),
                                    cfg.attention, causal)
  np.testing.assert_allclose(out, expected_x, atol=1e-5)
  np.testing.assert_allclose(per_layer["hidden_state"][-1], expected_h, atol=1e-5)
  np.testing.assert_allclose(per_layer["residual"][-1], out, atol=0)


@pytest.mark.parametrize("separation,steps", [("softmax", 1), ("sparsemax", 2)])
def test_mha_with_retrieval_on_h_matches_numpy(separation, steps):
  """kind=hopfield with energy_steps: ξ¹ = Kᵀ sep(H_n), then steps − 1 updates."""
  cfg = stack_config(kind="hopfield", alpha=0.6, alpha_hidden=0.7, energy_steps=steps,
                     separation=separation)
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, WIDTH))
  mask = attention.causal_mask(LENGTH)
  params = init_stack(cfg, x, mask)
  out, per_layer = layers.LayerStack(cfg).apply({"params": params}, x, mask,
                                                return_intermediates=True)
  expected_x, expected_h = np_stack(param_layout.unstack_layer_params(params),
                                    np.asarray(x, np.float64), cfg.attention, causal=True)
  np.testing.assert_allclose(out, expected_x, atol=2e-5)
  np.testing.assert_allclose(per_layer["hidden_state"][-1], expected_h, atol=1e-5)


@pytest.mark.parametrize("separation,steps", [("softmax", 0), ("softmax", 2), ("sparsemax", 3)])
@pytest.mark.parametrize("scan", [True, False])
def test_hopfield_energy_stack_matches_numpy_retrieval(separation, steps, scan):
  cfg = stack_config(kind="hopfield_energy", energy_steps=steps, separation=separation)
  cfg = StackConfig(**{**cfg.__dict__, "scan_layers": scan})
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, WIDTH))
  mask = attention.causal_mask(LENGTH)
  params = init_stack(cfg, x, mask)
  out, _ = layers.LayerStack(cfg).apply({"params": params}, x, mask)
  loop_params = param_layout.unstack_layer_params(params) if scan else params
  expected, _ = np_stack(loop_params, np.asarray(x, np.float64), cfg.attention, causal=True)
  np.testing.assert_allclose(out, expected, atol=2e-5)


def test_no_skip_stack_matches_numpy():
  cfg = StackConfig(**{**stack_config(kind="hopfield", alpha=0.6, alpha_hidden=0.7).__dict__,
                              "skip_connections": False})
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, WIDTH))
  params = init_stack(cfg, x)
  out, _ = layers.LayerStack(cfg).apply({"params": params}, x)
  expected, _ = np_stack(param_layout.unstack_layer_params(params), np.asarray(x, np.float64),
                         cfg.attention, causal=False, skip=False)
  np.testing.assert_allclose(out, expected, atol=1e-5)


def loss_fn(cfg, x, mask):
  def loss(params):
    y, _ = layers.LayerStack(cfg).apply({"params": params}, x, mask)
    return jnp.mean(jnp.sin(y))
  return loss


@pytest.mark.parametrize("kind", ["standard", "hopfield"])
@pytest.mark.parametrize("remat_policy", ["none", "full", "dots", "qkv_proj"])
def test_scan_and_loop_agree_in_values_and_gradients(kind, remat_policy):
  scanned = StackConfig(**{**stack_config(kind=kind).__dict__, "remat_policy": remat_policy})
  looped = StackConfig(**{**scanned.__dict__, "scan_layers": False})
  x = jax.random.normal(jax.random.key(2), (BATCH, LENGTH, WIDTH))
  mask = attention.causal_mask(LENGTH)
  params = init_stack(stack_config(kind=kind), x, mask)
  loss_s, grad_s = jax.value_and_grad(loss_fn(scanned, x, mask))(params)
  loss_l, grad_l = jax.value_and_grad(loss_fn(looped, x, mask))(param_layout.unstack_layer_params(params))
  # float32 rounding: XLA (jax 0.12) orders the scan body's sums unlike the loop's (the loss
  # 1.1e-6 rel., a gradient 6e-6 rel. apart).
  np.testing.assert_allclose(loss_s, loss_l, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6),
               grad_s, param_layout.stack_layer_params(grad_l))


def test_stack_unstack_round_trip_and_loop_init_layout():
  cfg = StackConfig(**{**stack_config().__dict__, "scan_layers": False})
  x = jnp.ones((1, LENGTH, WIDTH))
  looped = nn.unbox(layers.LayerStack(cfg).init(jax.random.key(0), x))["params"]
  assert sorted(looped) == [f"layers_{i}" for i in range(LAYERS)]
  restacked = param_layout.unstack_layer_params(param_layout.stack_layer_params(looped))
  jax.tree.map(np.testing.assert_array_equal, restacked, looped)


@pytest.mark.parametrize("kind", ["standard", "hopfield", "hopfield_energy"])
def test_causality_gradient_after_t_is_exactly_zero(kind):
  settings = {"hopfield": dict(h0="first_scores"),
              "hopfield_energy": dict(energy_steps=2, separation="entmax")}.get(kind, {})
  cfg = stack_config(kind=kind, **settings)
  x = jax.random.normal(jax.random.key(3), (1, LENGTH, WIDTH))
  mask = attention.causal_mask(LENGTH)
  params = init_stack(cfg, x, mask)
  t = 2
  grad_x = jax.grad(lambda x: layers.LayerStack(cfg).apply({"params": params}, x, mask)[0][0, t].sum())(x)
  assert np.all(np.asarray(grad_x[0, t + 1:]) == 0.0)
  assert np.any(np.asarray(grad_x[0, :t + 1]) != 0.0)


@pytest.mark.parametrize("kind", ["hopfield", "realformer"])
def test_mha_adds_no_parameters(kind):
  x = jnp.ones((1, LENGTH, WIDTH))
  standard = layers.LayerStack(stack_config(kind="standard")).init(jax.random.key(0), x)
  hopfield = layers.LayerStack(stack_config(kind=kind)).init(jax.random.key(0), x)
  assert jax.tree.structure(standard) == jax.tree.structure(hopfield)
  jax.tree.map(np.testing.assert_array_equal, nn.unbox(standard), nn.unbox(hopfield))


def test_alpha_hidden_zero_with_standard_residual_is_the_baseline():
  x = jax.random.normal(jax.random.key(4), (BATCH, LENGTH, WIDTH))
  params = init_stack(stack_config(), x)
  baseline, _ = layers.LayerStack(stack_config(kind="standard")).apply({"params": params}, x)
  mha, _ = layers.LayerStack(stack_config(kind="hopfield", alpha_hidden=0.0,
                                          residual="standard")).apply({"params": params}, x)
  np.testing.assert_allclose(mha, baseline, atol=1e-6)


def test_fused_standard_attention_matches_the_naive_path():
  x = jax.random.normal(jax.random.key(9), (BATCH, LENGTH, WIDTH))
  mask = attention.causal_mask(LENGTH) & (jnp.arange(LENGTH) > 0)[None, None, None, :]
  params = init_stack(stack_config(), x, mask)
  naive = layers.LayerStack(stack_config()).apply({"params": params}, x, mask)[0]
  fused = layers.LayerStack(stack_config(implementation="xla")).apply({"params": params}, x, mask)[0]
  np.testing.assert_allclose(fused, naive, atol=1e-5)
  with pytest.raises(ValueError, match=r"implementation \(kind='hopfield'\)='xla' is not allowed"):
    stack_config(kind="hopfield", implementation="xla")


def test_reset_every_layer_forgets_the_state():
  """reset_every=1 with first_scores: H_n = s_n at every layer, i.e. α′ plays no role."""
  x = jax.random.normal(jax.random.key(5), (BATCH, LENGTH, WIDTH))
  params = init_stack(stack_config(), x)
  reset = layers.LayerStack(stack_config(kind="hopfield", alpha_hidden=0.9, h0="first_scores",
                                         reset_every=1)).apply({"params": params}, x)[0]
  memoryless = layers.LayerStack(stack_config(kind="hopfield", alpha_hidden=0.0)).apply(
      {"params": params}, x)[0]
  carried = layers.LayerStack(stack_config(kind="hopfield", alpha_hidden=0.9,
                                           h0="first_scores")).apply({"params": params}, x)[0]
  np.testing.assert_allclose(reset, memoryless, atol=1e-5)  # α′s + (1−α′)s rounds
  assert np.abs(np.asarray(carried - memoryless)).max() > 1e-3


def test_noise_h0_is_a_fixed_draw_and_matters():
  x = jax.random.normal(jax.random.key(6), (BATCH, LENGTH, WIDTH))
  params = init_stack(stack_config(), x)
  run = lambda **kw: layers.LayerStack(stack_config(kind="hopfield", h0="noise", **kw)).apply(
      {"params": params}, x)[0]
  np.testing.assert_array_equal(run(), run())
  assert np.abs(np.asarray(run() - run(h0_noise_seed=1))).max() > 1e-4
  zeros = layers.LayerStack(stack_config(kind="hopfield")).apply({"params": params}, x)[0]
  np.testing.assert_allclose(run(h0_noise_std=0.0), zeros, atol=1e-6)
  h0 = attention.initial_hidden_state(3, HEADS, 5, noise_std=1.0, noise_seed=0)
  np.testing.assert_array_equal(h0[0], h0[2])   # one H_0 for every example
  np.testing.assert_array_equal(
      attention.initial_hidden_state(1, HEADS, 5, noise_std=1.0, noise_seed=0)[0],
      h0[0])                                     # whatever the batch size


def test_bfloat16_compute_keeps_hidden_state_float32():
  x = jax.random.normal(jax.random.key(7), (BATCH, LENGTH, WIDTH))
  params = init_stack(stack_config(), x)
  f32 = stack_config(kind="hopfield")
  bf16 = StackConfig(**{**f32.__dict__, "dtype": "bfloat16"})
  out32, inter32 = layers.LayerStack(f32).apply({"params": params}, x, return_intermediates=True)
  out16, inter16 = layers.LayerStack(bf16).apply({"params": params}, x, return_intermediates=True)
  assert out16.dtype == jnp.bfloat16 and inter16["hidden_state"].dtype == jnp.float32
  scale = float(jnp.abs(out32).max())
  np.testing.assert_allclose(out16.astype(jnp.float32), out32, atol=0.05 * scale)


def test_dropout_needs_and_uses_the_rng():
  cfg = StackConfig(**{**stack_config(kind="hopfield").__dict__, "dropout": 0.3,
                              "attention_dropout": 0.3})
  x = jax.random.normal(jax.random.key(8), (BATCH, LENGTH, WIDTH))
  params = init_stack(cfg, x)
  apply = lambda seed: layers.LayerStack(cfg).apply({"params": params}, x, deterministic=False,
                                                    rngs={"dropout": jax.random.key(seed)})[0]
  np.testing.assert_array_equal(apply(0), apply(0))
  assert np.abs(np.asarray(apply(0) - apply(1))).max() > 1e-3
