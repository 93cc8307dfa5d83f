"""experiments/context_wells.py: the per-head well statistics against a NumPy float64
iteration, and the q, k it reads from the model's `return_intermediates` against
Flax's own capture of the projections (the hook added to layers.Block)."""

import dataclasses
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import attention
from mha_jax.models import layers, param_layout
from mha_jax.models.stack_config import AttentionConfig, StackConfig

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("context_wells",
                                               ROOT / "experiments" / "context_wells.py")
wells = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wells)


def np_softmax(u):
  e = np.exp(u - u.max())
  return e / e.sum()


def np_energy(xi, keys, beta):
  u = beta * keys @ xi
  return -(u.max() + np.log(np.exp(u - u.max()).sum())) / beta + 0.5 * xi @ xi


def np_well(weights, allowed):
  cumulative = np.cumsum(np.sort(weights)[::-1])
  count = min(1 + int(np.sum(cumulative < 0.9)), allowed)
  return 0 if count == 1 else 2 if 2 * count > allowed else 1


def np_query(q, keys, beta, tol, max_steps):
  """(updates, converged, energy drop, start well, fixed-point well) of one query."""
  xi, steps, converged = q, 0, False
  while steps < max_steps and not converged:
    new = np_softmax(beta * keys @ xi) @ keys
    steps, converged, xi = steps + 1, np.linalg.norm(new - xi) <= tol, new
  return (steps, converged, np_energy(q, keys, beta) - np_energy(xi, keys, beta),
          np_well(np_softmax(beta * keys @ q), len(keys)),
          np_well(np_softmax(beta * keys @ xi), len(keys)))


@pytest.mark.parametrize("causal", [True, False])
def test_layer_wells_match_a_numpy_float64_iteration(causal):
  rng = np.random.default_rng(3)
  B, T, N, D, beta, tol = 2, 6, 2, 4, 0.9, 1e-3
  q, k = (rng.normal(size=(B, T, N, D)) * 1.5 for _ in range(2))
  valid = np.ones((B, T), bool)
  valid[1, -2:] = False   # padded queries are left out of the statistics
  mask = attention.causal_mask(T) if causal else None
  got = wells.layer_wells(jnp.float32(q), jnp.float32(k), mask, valid, beta=beta, tol=tol,
                          max_steps=50)
  for n in range(N):
    per_query = np.array([np_query(q[b, t, n], k[b, : t + 1 if causal else T, n], beta, tol, 50)
                          for b in range(B) for t in range(T) if valid[b, t]])
    steps, converged, drop, start, fixed = per_query.T
    assert abs(got["mean_steps"][n] - steps.mean()) <= 1 / len(steps)  # one query at the tol edge
    assert got["max_steps"][n] == steps.max() and got["converged"][n] == converged.mean()
    np.testing.assert_allclose(got["energy_drop"][n], drop.mean(), rtol=1e-4, atol=1e-5)
    for types, name in ((start, "start_wells"), (fixed, "fixed_point_wells")):
      np.testing.assert_allclose(got[name][n], [(types == i).mean() for i in range(3)])
    assert min(drop) >= -1e-6   # the update never raises the energy


@pytest.mark.parametrize("rope_theta", [None, 100.0])
def test_intermediates_hold_the_scores_own_query_and_key(rope_theta):
  cfg = StackConfig(num_layers=2, width=8, num_heads=2, mlp_dim=16, rope_theta=rope_theta,
                    attention=AttentionConfig(kind="standard"))
  x = jax.random.normal(jax.random.key(0), (2, 5, 8))
  params = layers.LayerStack(cfg).init(jax.random.key(1), x)["params"]
  _, inter = layers.LayerStack(cfg).apply({"params": params}, x, return_intermediates=True)
  loop = layers.LayerStack(dataclasses.replace(cfg, scan_layers=False))
  _, state = loop.apply({"params": param_layout.unstack_layer_params(params)}, x,
                        capture_intermediates=lambda m, _: m.name in ("query", "key"),
                        mutable=["intermediates"])
  captured = state["intermediates"]
  for n in range(2):
    for name in ("query", "key"):
      projection = captured[f"layers_{n}"]["attention"][name]["__call__"][0]
      expected = projection if rope_theta is None else layers.apply_rope(projection, rope_theta)
      np.testing.assert_allclose(inter[name][n], expected, atol=1e-6)
