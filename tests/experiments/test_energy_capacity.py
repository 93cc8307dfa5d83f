"""experiments/energy_capacity.py on a tiny grid: its success rates against a NumPy
float64 retrieval loop, one stored pattern is always retrieved, and the script's JSON
and PNG agree with their own rows."""

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "energy_capacity", ROOT / "experiments" / "energy_capacity.py")
capacity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(capacity)


def np_weights(u, separation):
  if separation == "softmax":
    e = np.exp(u - u.max())
    return e / e.sum()
  z = np.sort(u)[::-1]  # sparsemax by sorting
  rank = np.arange(1, len(u) + 1)
  support = rank[1 + rank * z > np.cumsum(z)].max()
  return np.maximum(u - (np.cumsum(z)[support - 1] - 1) / support, 0.0)


def np_success(patterns, target, query, count, beta, steps, separation):
  stored = patterns[:count].astype(np.float64)
  state = query.astype(np.float64)
  for _ in range(steps):
    state = np_weights(beta * stored @ state, separation) @ stored
  out = np_weights(beta * stored @ state, separation) @ stored
  return bool(np.all(np.sign(out) == patterns[target]))


def test_draws_corrupt_queries_as_documented():
  patterns, targets, queries = capacity.draw_problem(0, 10, 6, [2, 6], 7, 0.3)
  assert patterns.shape == (6, 10) and set(np.unique(patterns)) == {-1.0, 1.0}
  assert targets.shape == (2, 14) and targets[0].max() < 2
  for i, count in enumerate([2, 6]):
    clean = patterns[targets[i]]
    noisy, half = queries[i, :7], queries[i, 7:]
    assert np.all(np.abs(noisy) == 1.0) and (noisy != clean[:7]).any()
    assert np.all(np.sum(half == 0.0, axis=1) == 5)
    np.testing.assert_array_equal(half[half != 0], clean[7:][half != 0])
    assert targets[i].max() < count


@pytest.mark.parametrize("separation", ["softmax", "sparsemax"])
def test_success_rates_match_a_numpy_loop(separation):
  counts, steps, factors, queries = [1, 3, 6], [0, 2], [1.0, 4.0], 5
  rows = capacity.grid_rows(8, separation, None, pattern_counts=counts, steps=steps,
                            beta_factors=factors, seeds=3, queries=queries, flip=0.25)
  assert len(rows) == len(counts) * len(steps) * len(factors) * 2
  for row in rows:
    rates = []
    for seed in range(3):
      patterns, targets, corrupted = capacity.draw_problem(seed, 8, 6, counts, queries, 0.25)
      i = counts.index(row["patterns"])
      half = slice(0, queries) if row["corruption"] == "noisy" else slice(queries, None)
      rates.append(np.mean([
          np_success(patterns, t, q, row["patterns"], row["beta_factor"] / np.sqrt(8),
                     row["steps"], separation)
          for t, q in zip(targets[i, half], corrupted[i, half])]))
    np.testing.assert_allclose(row["per_seed"], rates)
    assert row["overflowed"] == 0.0
    if row["patterns"] == 1:  # one stored pattern: every readout is that pattern
      assert row["per_seed"] == [1.0, 1.0, 1.0]


def test_an_overflowing_cubic_iteration_is_reported_as_overflow():
  """E = −β⁻¹ lse(φ(βKξ)) + ½‖ξ‖² is unbounded below for c₃ > 0: each step multiplies
  ξ by about φ′(u) ≈ 3c₃u², so at D = 64, β = 4/√D, three steps overflow float32."""
  rows = capacity.grid_rows(64, "cubic", (0.0, 1 / 6), pattern_counts=[4], steps=[0, 3],
                            beta_factors=[4.0], seeds=2, queries=4, flip=0.1)
  by_steps = {(r["steps"], r["corruption"]): r for r in rows}
  assert by_steps[0, "noisy"]["overflowed"] == 0.0 and by_steps[0, "noisy"]["mean"] == 1.0
  assert by_steps[3, "noisy"]["overflowed"] == 1.0 and by_steps[3, "noisy"]["mean"] == 0.0


def test_script_writes_consistent_json_and_png(tmp_path):
  subprocess.run([sys.executable, "experiments/energy_capacity.py", "--smoke",
                  "--separations=softmax,entmax:1.5", f"--json={tmp_path}/c.json",
                  f"--plot={tmp_path}/c.png"], cwd=ROOT, check=True, capture_output=True,
                 env={"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  result = json.loads((tmp_path / "c.json").read_text())
  rows = result["rows"]
  assert len(rows) == 2 * 2 * 2 * 2  # separations × M × steps × corruptions
  for row in rows:
    assert len(row["per_seed"]) == 3
    assert row["mean"] == pytest.approx(np.mean(row["per_seed"]))
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
  for curve in result["capacity"]:
    same = [r for r in rows if all(r[a] == curve[a] for a in
                                   ("separation", "dim", "steps", "beta_factor", "corruption"))]
    assert curve["capacity"] == max([r["patterns"] for r in same if r["mean"] >= 0.9],
                                    default=0)
  assert (tmp_path / "c.png").stat().st_size > 10_000
