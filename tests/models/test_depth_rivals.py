"""The cross-layer rivals that carry a history of earlier outputs (Attention Residuals,
DenseFormer) or residual streams (hyper-connections, mHC static and per token) against a literal
NumPy float64 loop of their equations, scanned and unscanned; at init DenseFormer and
mHC are the plain pre-norm stack and AttnRes a uniform average over depth; mHC's
Sinkhorn–Knopp projection against closed forms."""

import json
import pathlib

import flax.linen as nn
import jax
import numpy as np
import pytest

from mha_jax import depth_mixing, hyper_connections, kinds
from mha_jax.models import layers
from tests.models.test_rivals import (BATCH, LAYERS, LENGTH, WIDTH, loop_layout, np_layernorm,
                                      stack_config)

DEPTH_KINDS = ("attention_residuals", "denseformer")
CROSS_LAYER_KINDS = DEPTH_KINDS + ("hyper_connections",)


def perturbed_init(cfg, x):
  """Params with non-trivial norms, pseudo-queries, key scales, DWA weights and
  stream-mixing offsets, so the reference must use every one of them."""
  params = nn.unbox(layers.LayerStack(cfg).init(jax.random.key(0), x))["params"]
  moved = ("norm", "depth_attention", "dwa_delta", "hyper")
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


def np_sinkhorn(logits, iterations=20):
  """Row then column normalisation of exp(logits) [..., n, n], one matrix per leading index."""
  m = np.exp(logits)
  for _ in range(iterations):
    m = m / m.sum(-1, keepdims=True)
    m = m / m.sum(-2, keepdims=True)
  return m


def np_sigmoid(z):
  return 1 / (1 + np.exp(-z))


def np_dynamic_terms(streams, q, n, eps=1e-5):
  """mHC's per-token terms α·x̃φ: x̃ = each token's streams side by side [B, T, n·D],
  divided by their root mean square; [B, T, n], [B, T, n], [B, T, n, n]."""
  flat = np.concatenate(streams, axis=-1)
  normed = flat / np.sqrt((flat ** 2).mean(-1, keepdims=True) + eps)
  pre, post, res = (gate * normed @ q[f"{name}_projection"]
                    for gate, name in zip(q["gates"], ("pre", "post", "res")))
  return pre, post, res.reshape(res.shape[:2] + (n, n))


def np_hyper_stack(p64, x, n=4, dynamic=False):
  """mHC, written from the papers' update: n copies of x; around sublayer k
  (attention 2l, MLP 2l + 1) h = Σ_j σ(b_pre)_j x_j, x_i ← Σ_j SK(b_res)_ij x_j +
  2σ(b_post)_i F(h), the logits b = HC's init + the learned offsets (+ the per-token
  terms when dynamic, making every weight [B, T, …]); out = mean."""
  streams = [x] * n
  for layer in range(LAYERS):
    p = p64[f"layers_{layer}"]
    for sublayer, (name, branch) in enumerate((("attention_hyper", np_attention),
                                                 ("mlp_hyper", np_mlp))):
      k = 2 * layer + sublayer
      pre = np.array([0.0 if i == k % n else -np.log(2 * n - 3) for i in range(n)])
      post = np.zeros(n)
      res = np.where(np.eye(n) == 1, 0.0, -4.0)
      pre, post, res = pre + p[name]["pre"], post + p[name]["post"], res + p[name]["res"]
      if dynamic:
        terms = np_dynamic_terms(streams, p[name], n)
        pre, post, res = pre + terms[0], post + terms[1], res + terms[2]
      pre, post, res = np_sigmoid(pre), 2 * np_sigmoid(post), np_sinkhorn(res)
      weight = lambda w, *index: w[(..., *index)][..., None]   # [B, T, 1] or a scalar
      y = branch(p, sum(weight(pre, j) * streams[j] for j in range(n)))
      streams = [sum(weight(res, i, j) * streams[j] for j in range(n)) + weight(post, i) * y
                 for i in range(n)]
  return sum(streams) / n


def np_stack(params, x, kind, skip=True, dynamic=False):
  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), loop_layout(params))
  if kind == "hyper_connections":   # no additive skip to drop: `skip` changes nothing
    return np_hyper_stack(p64, x, dynamic=dynamic)
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
@pytest.mark.parametrize("kind", CROSS_LAYER_KINDS)
def test_depth_rival_matches_numpy_equations(kind, skip, scan):
  cfg = stack_config(scan, kind=kind)
  cfg = type(cfg)(**{**cfg.__dict__, "skip_connections": skip})
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, WIDTH))
  params = perturbed_init(cfg, x)
  out, _ = layers.LayerStack(cfg).apply({"params": params}, x)
  np.testing.assert_allclose(out, np_stack(params, np.asarray(x, np.float64), kind, skip),
                             atol=2e-5)


@pytest.mark.parametrize("scan", [True, False])
def test_dynamic_mhc_matches_numpy_equations(scan):
  """Per-token weights: every token's pre, post and res differ (the projections and
  gates are perturbed), and the stack still matches the NumPy loop."""
  cfg = stack_config(scan, kind="hyper_connections", hyper_connections_dynamic=True)
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, WIDTH))
  params = perturbed_init(cfg, x)
  out, _ = layers.LayerStack(cfg).apply({"params": params}, x)
  x64 = np.asarray(x, np.float64)
  expected = np_stack(params, x64, "hyper_connections", dynamic=True)
  np.testing.assert_allclose(out, expected, atol=2e-5)
  static = np_stack(params, x64, "hyper_connections")   # the same offsets, no per-token term
  assert np.abs(expected - static).max() > 1e-2


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("kind,own,atol", [
    ("denseformer", ("dwa_delta",), 1e-6),
    # float32 σ(−log 5) and Sinkhorn row sums are 1 only to rounding: ~2e-6 at |x| ~ 3
    ("hyper_connections", ("attention_hyper", "mlp_hyper"), 1e-5),
    ("hyper_connections_dynamic", ("attention_hyper", "mlp_hyper"), 1e-5)])
def test_rival_at_init_is_the_plain_stack(kind, own, atol, scan):
  """DenseFormer's a_l = identity, and mHC's equal streams read with weights summing to
  1, written with post = 1 and mixed by a doubly stochastic matrix: at init both
  compute what standard attention computes with the same weights; moving their own
  parameters moves them."""
  x = jax.random.normal(jax.random.key(1), (BATCH, LENGTH, WIDTH))
  dynamic = kind == "hyper_connections_dynamic"
  cfg = stack_config(scan, kind=kind.removesuffix("_dynamic"), hyper_connections_dynamic=dynamic)
  params = nn.unbox(layers.LayerStack(cfg).init(jax.random.key(0), x))["params"]
  out, _ = layers.LayerStack(cfg).apply({"params": params}, x)
  expected, _ = layers.LayerStack(stack_config(scan)).apply({"params": _without(own, params)}, x)
  np.testing.assert_allclose(out, expected, atol=atol)
  moved = jax.tree_util.tree_map_with_path(
      lambda path, p: p + 0.5 if any(name in str(path) for name in own) else p, params)
  out_moved, _ = layers.LayerStack(cfg).apply({"params": moved}, x)
  assert np.abs(np.asarray(out_moved - expected)).max() > 1e-3


def _without(names, params):
  if not isinstance(params, dict):
    return params
  return {k: _without(names, v) for k, v in params.items() if k not in names}


def test_attention_residuals_at_init_average_uniformly():
  """w = 0: every written entry gets weight 1/filled (closed form), unwritten none."""
  history = np.random.default_rng(0).normal(size=(5, 2, 3, 4)).astype(np.float32)
  mixed = depth_mixing.depth_attention(history, 3, np.zeros(4, np.float32), np.ones(4, np.float32), 1e-6)
  np.testing.assert_allclose(mixed, history[:3].mean(0), atol=1e-6)


def test_new_parameters_are_what_the_kind_rows_say():
  """AttnRes: two [D] vectors (query, key scale) per sublayer mix, 2 per layer;
  DenseFormer: L+1 DWA weights per block; mHC: 2n + n² = 24 per sublayer (n = 4),
  and with the per-token term n·D·24 projection weights and 3 gates more."""
  x = np.zeros((1, LENGTH, WIDTH), np.float32)
  count = {kind: sum(p.size for p in jax.tree.leaves(nn.unbox(layers.LayerStack(
      stack_config(kind=kind)).init(jax.random.key(0), x))["params"]))
      for kind in ("standard",) + CROSS_LAYER_KINDS}
  assert count["attention_residuals"] == count["standard"] + LAYERS * 2 * 2 * WIDTH
  assert count["denseformer"] == count["standard"] + LAYERS * (LAYERS + 1)
  assert count["hyper_connections"] == count["standard"] + LAYERS * 2 * 24
  dynamic = sum(p.size for p in jax.tree.leaves(nn.unbox(layers.LayerStack(stack_config(
      kind="hyper_connections", hyper_connections_dynamic=True)).init(
          jax.random.key(0), x))["params"]))
  assert dynamic == count["hyper_connections"] + LAYERS * 2 * (4 * WIDTH * 24 + 3)
  assert set(CROSS_LAYER_KINDS) <= set(kinds.names(rival=True))


def test_sinkhorn_knopp_against_closed_forms():
  """Rows and columns sum to 1; the result is D₁ exp(L) D₂ (Sinkhorn's theorem), so
  every cross-ratio P_ij P_kl / (P_il P_kj) is exp(L)'s; 2×2: p = √(ad) / (√(ad) + √(bc));
  a rank-one exp(u_i + v_j) becomes the uniform 1/n."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 4)).astype(np.float32)
  p = np.asarray(hyper_connections.sinkhorn_knopp(logits), np.float64)
  np.testing.assert_allclose(p.sum(0), 1, atol=1e-6)
  np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
  a = np.exp(logits.astype(np.float64))
  for i, j, k, l in ((0, 1, 2, 3), (1, 3, 0, 2), (3, 0, 2, 1)):
    np.testing.assert_allclose(p[i, j] * p[k, l] / (p[i, l] * p[k, j]),
                               a[i, j] * a[k, l] / (a[i, l] * a[k, j]), rtol=1e-4)
  two = np.array([[0.3, -1.2], [0.8, 0.1]], np.float32)
  (a, b), (c, d) = np.exp(two.astype(np.float64))
  diagonal = np.sqrt(a * d) / (np.sqrt(a * d) + np.sqrt(b * c))
  np.testing.assert_allclose(hyper_connections.sinkhorn_knopp(two),
                             [[diagonal, 1 - diagonal], [1 - diagonal, diagonal]], atol=1e-6)
  u, v = rng.normal(size=(2, 5)).astype(np.float32)
  np.testing.assert_allclose(hyper_connections.sinkhorn_knopp(u[:, None] + v[None]),
                             np.full((5, 5), 0.2), atol=1e-6)


@pytest.mark.parametrize("sublayer", [0, 1, 5])
def test_mhc_initial_weights_are_the_residual(sublayer):
  """pre: 1/2 on stream k mod 4, 1/6 elsewhere (sums to 1); post = 1; res doubly
  stochastic with diagonal 1 / (1 + 3e⁻⁴): equal streams x read as x and each
  receives x + F(x)."""
  zeros = np.zeros(4, np.float32)
  pre, post, res = hyper_connections.mixing_weights(zeros, zeros, np.zeros((4, 4), np.float32),
                                                    sublayer)
  np.testing.assert_allclose(pre, np.where(np.arange(4) == sublayer % 4, 0.5, 1 / 6), atol=1e-7)
  np.testing.assert_allclose(post, np.ones(4), atol=1e-7)
  diagonal = 1 / (1 + 3 * np.exp(-4.0))
  np.testing.assert_allclose(res, np.where(np.eye(4) == 1, diagonal, (1 - diagonal) / 3),
                             atol=1e-7)


def rivals_cost_figures(data):
  """The README's rivals cost figures, rendered from the step_cost artefact: each
  kind's train step time and XLA temporary memory ÷ standard attention's."""
  rows = {row["implementation"]: row for row in data["rows"]}
  names = ([("naive", "MHA")] + [(kind, kinds.get(kind).label) for kind in CROSS_LAYER_KINDS]
           + [("hyper_connections_dynamic", "mHC per token")])
  time = ", ".join(f"×{rows[name]['step_s_x']:.2f} {label}" for name, label in names)
  memory = ", ".join(f"×{rows[name]['temp_mib_x']:.2f} {label}" for name, label in names)
  return f"train step time {time}; XLA temporary memory {memory}"


def test_readme_rivals_cost_quotes_the_artefact():
  root = pathlib.Path(__file__).resolve().parents[2]
  data = json.loads((root / "sweeps" / "rivals_cost" / "step_cost.json").read_text())
  assert {row["implementation"] for row in data["rows"]} >= {
      "standard", "naive", *CROSS_LAYER_KINDS, "hyper_connections_dynamic"}
  readme = " ".join((root / "README.md").read_text().split())
  assert rivals_cost_figures(data) in readme, rivals_cost_figures(data)
