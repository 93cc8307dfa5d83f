"""The rank-collapse rivals (value residual, ReZero) against a literal NumPy loop of
their equations, scanned and unscanned; ReZero at init is the identity map of
attention; the α/α′ override collection equals the same values set in the config."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax.models import layers, param_layout
from mha_jax.models.stack_config import AttentionConfig, StackConfig

WIDTH, HEADS, MLP, LAYERS, LENGTH, BATCH = 12, 3, 20, 4, 6, 2


def stack_config(scan=True, **attention_kw):
  return StackConfig(num_layers=LAYERS, width=WIDTH, num_heads=HEADS, mlp_dim=MLP,
                     mlp="gelu_tanh", norm_eps=1e-5, init_std=0.3, scan_layers=scan,
                     attention=AttentionConfig(**attention_kw))


def perturbed_init(cfg, x):
  """Params with non-trivial norms and (ReZero) non-zero gates, so the reference
  must use every one of them."""
  params = nn.unbox(layers.LayerStack(cfg).init(jax.random.key(0), x))["params"]
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p + 0.3 * jax.random.normal(jax.random.key(len(str(path))), p.shape)
      if "norm" in str(path) or "gate" in str(path) else p, params)


def loop_layout(params):
  return param_layout.unstack_layer_params(params) if "layers" in params else params


def np_layernorm(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def np_stack(params, x, att):
  """x + g·Attn with V_n ← λV_1 + (1−λ)V_n (value residual) or g learned (ReZero)."""
  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), loop_layout(params))
  v_first = None
  for n in range(LAYERS):
    p = p64[f"layers_{n}"]
    y = np_layernorm(x, p["attention_norm"])
    q, k, v = (np.einsum("btd,dnh->btnh", y, p["attention"][name]["kernel"])
               + p["attention"][name]["bias"] for name in ("query", "key", "value"))
    if att.kind == "value_residual":
      v_first = v if n == 0 else v_first
      v = att.value_residual_lambda * v_first + (1 - att.value_residual_lambda) * v
    s = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(q.shape[-1])
    weights = np.exp(s - s.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    u = np.einsum("bnts,bsnh->btnh", weights, v)
    u = np.einsum("btnh,nhd->btd", u, p["attention"]["out"]["kernel"]) + p["attention"]["out"]["bias"]
    x = x + (p["rezero_gate"] if att.kind == "rezero" else 1.0) * u
    hidden = np_layernorm(x, p["mlp_norm"]) @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]
    hidden = 0.5 * hidden * (1 + np.tanh(np.sqrt(2 / np.pi) * (hidden + 0.044715 * hidden ** 3)))
    x = x + hidden @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]
  return x


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("attention_kw", [dict(kind="value_residual", value_residual_lambda=0.8),
                                          dict(kind="rezero")])
def test_rival_stack_matches_numpy_equations(attention_kw, scan):
  cfg = stack_config(scan, **attention_kw)
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, WIDTH))
  params = perturbed_init(cfg, x)
  out, _ = layers.LayerStack(cfg).apply({"params": params}, x)
  np.testing.assert_allclose(out, np_stack(params, np.asarray(x, np.float64), cfg.attention),
                             atol=1e-5)


@pytest.mark.parametrize("scan", [True, False])
def test_rezero_at_init_is_the_identity_map_of_attention(scan):
  """With g = 0 the attention branch adds nothing: the stack equals the same
  stack whose attention output is zeroed (x ← x + 0, then the MLP)."""
  cfg = stack_config(scan, kind="rezero")
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, WIDTH))
  params = nn.unbox(layers.LayerStack(cfg).init(jax.random.key(0), x))["params"]
  gates = [p for path, p in jax.tree_util.tree_leaves_with_path(params) if "gate" in str(path)]
  assert sum(g.size for g in gates) == LAYERS and all(np.all(np.asarray(g) == 0) for g in gates)
  out, _ = layers.LayerStack(cfg).apply({"params": params}, x)
  no_attention = jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.zeros_like(p) if "attention/out" in "/".join(
          str(getattr(k, "key", k)) for k in path) else p, params)
  expected, _ = layers.LayerStack(stack_config(scan)).apply(
      {"params": _drop_gates(no_attention)}, x)
  np.testing.assert_allclose(out, expected, atol=1e-6)
  # and it is not trivially so: with the gates set to 1 attention matters
  ones = jax.tree_util.tree_map_with_path(
      lambda path, p: jnp.ones_like(p) if "gate" in str(path) else p, params)
  moved, _ = layers.LayerStack(cfg).apply({"params": ones}, x)
  assert np.abs(np.asarray(moved - out)).max() > 1e-2


def _drop_gates(params):
  if not isinstance(params, dict):
    return params
  return {k: _drop_gates(v) for k, v in params.items() if k != "rezero_gate"}


def test_value_residual_and_standard_add_no_parameters_rezero_adds_one_per_layer():
  x = jnp.zeros((1, LENGTH, WIDTH))
  count = {kind: sum(p.size for p in jax.tree.leaves(nn.unbox(layers.LayerStack(
      stack_config(kind=kind)).init(jax.random.key(0), x))["params"]))
      for kind in ("standard", "value_residual", "rezero")}
  assert count["value_residual"] == count["standard"]
  assert count["rezero"] == count["standard"] + LAYERS


def test_bad_lambda_is_one_clear_error():
  with pytest.raises(ValueError, match="value_residual_lambda=1.5"):
    AttentionConfig(kind="value_residual", value_residual_lambda=1.5)


@pytest.mark.parametrize("scan", [True, False])
def test_traced_alpha_overrides_equal_the_config_values(scan):
  """The sweep's per-call α/α′ (an `OVERRIDES` collection) computes what a model
  configured with those values computes, and is traceable under vmap."""
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, WIDTH))
  base = stack_config(scan, kind="hopfield", alpha=0.5, alpha_hidden=0.5)
  params = perturbed_init(base, x)
  settings = jnp.array([[0.2, 0.9], [0.7, 0.3]], jnp.float32)

  def run(alphas):
    variables = {"params": params,
                 layers.OVERRIDES: {"alpha": alphas[0], "alpha_hidden": alphas[1]}}
    return layers.LayerStack(base).apply(variables, x)[0]

  swept = jax.vmap(run)(settings)
  for i, (alpha, alpha_hidden) in enumerate(settings.tolist()):
    cfg = stack_config(scan, kind="hopfield", alpha=alpha, alpha_hidden=alpha_hidden)
    expected, _ = layers.LayerStack(cfg).apply({"params": params}, x)
    np.testing.assert_allclose(swept[i], expected, atol=1e-5)
