"""The cross-layer rivals that carry a history of earlier outputs (Attention Residuals,
DenseFormer) against a literal NumPy float64 loop of their equations, scanned and
unscanned; at init DenseFormer is the plain pre-norm stack and AttnRes a uniform
average over depth."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from mha_jax import depth_mixing, kinds
from mha_jax.models import layers
from tests.models.test_rivals import (BATCH, LAYERS, LENGTH, WIDTH, loop_layout, np_layernorm,
                                      stack_config)

DEPTH_KINDS = ("attention_residuals", "denseformer")


def perturbed_init(cfg, x):
  """Params with non-trivial norms, pseudo-queries, key scales and DWA weights, so the
  reference must use every one of them."""
  params = nn.unbox(layers.LayerStack(cfg).init(jax.random.key(0), x))["params"]
  moved = ("norm", "depth_attention", "dwa_delta")
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p + 0.3 * jax.random.normal(jax.random.key(len(str(path))), p.shape)
      if any(name in str(path) for name in moved) else p, params)


def np_attention(p, x):
  y = np_layernorm(x, p["attention_norm"])
  q, k, v = (np.einsum("btd,dnh->btnh", y, p["attention"][name]["kernel"])
             + p["attention"][name]["bias"] for name in ("query", "key", "value"))
  s = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(q.shape[-1])
  weights = np.exp(s - s.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  u = np.einsum("bnts,bsnh->btnh", weights, v)
  return np.einsum("btnh,nhd->btd", u, p["attention"]["out"]["kernel"]) + p["attention"]["out"]["bias"]


def np_mlp(p, x):
  hidden = np_layernorm(x, p["mlp_norm"]) @ p["mlp"]["fc1"]["kernel"] + p["mlp"]["fc1"]["bias"]
  hidden = 0.5 * hidden * (1 + np.tanh(np.sqrt(2 / np.pi) * (hidden + 0.044715 * hidden ** 3)))
  return hidden @ p["mlp"]["fc2"]["kernel"] + p["mlp"]["fc2"]["bias"]


def np_depth_softmax(values, p, eps=1e-5):
  """h = Σ_i softmax_i(w · RMSNorm(v_i)) v_i over a Python list of earlier outputs."""
  v = np.stack(values)
  keys = v / np.sqrt((v ** 2).mean(-1, keepdims=True) + eps) * p["key_scale"]
  logits = np.einsum("hbtd,d->hbt", keys, p["query"])
  weights = np.exp(logits - logits.max(0))
  return np.einsum("hbt,hbtd->btd", weights / weights.sum(0), v)


def np_stack(params, x, kind, skip=True):
  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), loop_layout(params))
  history = [x]
  for n in range(LAYERS):
    p = p64[f"layers_{n}"]
    u = np_attention(p, x)
    if kind == "attention_residuals":
      history.append(u)
      x = np_depth_softmax(history, p["mlp_depth_attention"])
      history.append(np_mlp(p, x))
      x = np_depth_softmax(history, p["output_depth_attention"])
    else:
      x = x + u if skip else u
      x = x + np_mlp(p, x) if skip else np_mlp(p, x)
      history.append(x)
      weights = p["dwa_delta"][:len(history)].copy()
      weights[-1] += 1.0
      x = sum(a * h for a, h in zip(weights, history))
  return x


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("kind", DEPTH_KINDS)
def test_depth_rival_matches_numpy_equations(kind, skip, scan):
  cfg = stack_config(scan, kind=kind)
  cfg = type(cfg)(**{**cfg.__dict__, "skip_connections": skip})
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, WIDTH))
  params = perturbed_init(cfg, x)
  out, _ = layers.LayerStack(cfg).apply({"params": params}, x)
  np.testing.assert_allclose(out, np_stack(params, np.asarray(x, np.float64), kind, skip),
                             atol=2e-5)


@pytest.mark.parametrize("scan", [True, False])
def test_denseformer_at_init_is_the_plain_stack(scan):
  """a_l = identity at init: DenseFormer computes what standard attention computes
  with the same weights; perturbing δ moves it."""
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, WIDTH))
  params = nn.unbox(layers.LayerStack(stack_config(scan, kind="denseformer")).init(
      jax.random.key(0), x))["params"]
  plain = jax.tree.map(lambda p: p, params)
  plain.pop("layers" if scan else "layers_0")
  out, _ = layers.LayerStack(stack_config(scan, kind="denseformer")).apply({"params": params}, x)
  standard = {k: v for k, v in _without("dwa_delta", params).items()}
  expected, _ = layers.LayerStack(stack_config(scan)).apply({"params": standard}, x)
  np.testing.assert_allclose(out, expected, atol=1e-6)


def _without(name, params):
  if not isinstance(params, dict):
    return params
  return {k: _without(name, v) for k, v in params.items() if k != name}


def test_attention_residuals_at_init_average_uniformly():
  """w = 0: every written entry gets weight 1/filled (closed form), unwritten none."""
  history = np.random.default_rng(0).normal(size=(5, 2, 3, 4)).astype(np.float32)
  mixed = depth_mixing.depth_attention(history, 3, np.zeros(4, np.float32), np.ones(4, np.float32), 1e-6)
  np.testing.assert_allclose(mixed, history[:3].mean(0), atol=1e-6)


def test_new_parameters_are_what_the_kind_rows_say():
  """AttnRes: two [D] vectors (query, key scale) per sublayer mix, 2 per layer;
  DenseFormer: L+1 DWA weights per block."""
  x = np.zeros((1, LENGTH, WIDTH), np.float32)
  count = {kind: sum(p.size for p in jax.tree.leaves(nn.unbox(layers.LayerStack(
      stack_config(kind=kind)).init(jax.random.key(0), x))["params"]))
      for kind in ("standard",) + DEPTH_KINDS}
  assert count["attention_residuals"] == count["standard"] + LAYERS * 2 * 2 * WIDTH
  assert count["denseformer"] == count["standard"] + LAYERS * (LAYERS + 1)
  assert set(DEPTH_KINDS) <= set(kinds.names(rival=True))
