"""Retrieval capacity of the energy heads (issue 20 §5, row h).

M random ±1 patterns in dimension D are stored as keys and values of one head. A
query is a stored pattern corrupted one of two ways:

    noisy        a fraction --flip of its signs flipped
    half_masked  a random half of its coordinates set to 0

and is answered by mha_jax.energy: `steps` updates ξ ← Kᵀ sep(β K ξ) from ξ⁰ = query,
then the readout sep(β K ξ)ᵀ V (steps = 0 is one attention step). A query counts as
retrieved when sign(readout) equals its pattern in every coordinate. β = factor/√D
(factor 1 is what attention uses); the polynomial head is scale-free, so β does not
change it. Each seed draws new patterns, targets and corruptions; the JSON holds
every seed's success rate, the mean and a 95 % t interval over seeds, and per curve
the largest M in the grid whose mean success is ≥ 0.9 ("capacity", a lower bound
limited by the grid).

    python experiments/energy_capacity.py --json=energy_capacity.json --plot=energy_capacity.png
    python experiments/energy_capacity.py --smoke --json=/tmp/c.json --plot=/tmp/c.png
"""

import itertools
import json
import math
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from mha_jax import energy
from mha_jax.sweep.aggregate import t_quantile

FLAGS = flags.FLAGS
CORRUPTIONS = ("noisy", "half_masked")


def parse_separation(spec):
  """'entmax:1.5' → ('entmax', 1.5); 'cubic:0:0.1667' → ('cubic', (0.0, 0.1667))."""
  name, *params = spec.split(":")
  params = [float(p) for p in params]
  param = None if not params else params[0] if len(params) == 1 else tuple(params)
  return name, energy.resolve_separation(name, param)


def draw_problem(seed, dim, max_patterns, pattern_counts, queries, flip):
  """(patterns [S, D], targets [len(M), 2Q], queries [len(M), 2Q, D]): float32 NumPy,
  per M the noisy queries first, then the half-masked ones."""
  rng = np.random.default_rng(seed)
  patterns = rng.choice(np.float32([-1.0, 1.0]), size=(max_patterns, dim))
  targets, corrupted = [], []
  for count in pattern_counts:
    target = rng.integers(0, count, size=2 * queries)
    query = patterns[target].copy()
    query[:queries] *= np.where(rng.random((queries, dim)) < flip, -1.0, 1.0)
    hidden = np.argsort(rng.random((queries, dim)), axis=1)[:, : dim // 2]
    np.put_along_axis(query[queries:], hidden, 0.0, axis=1)
    targets.append(target)
    corrupted.append(query)
  return patterns, np.stack(targets), np.stack(corrupted)


def retrieved(patterns_SxD, targets_Q, queries_QxD, count, beta, *, steps, separation,
              param):
  """[2, len(steps), Q] bools: sign(readout) == pattern, and readout finite, after each
  step count, with only the first `count` patterns stored (the rest masked)."""
  k = patterns_SxD[None, :, None, :]
  mask = (jnp.arange(patterns_SxD.shape[0]) < count)[None, None, None, :]
  options = dict(beta=beta, mask=mask, separation=separation, separation_param=param)
  state = queries_QxD[None, :, None, :]
  hits, finite = [], []
  for step in range(max(steps) + 1):
    if step in steps:
      out = energy.hopfield_retrieve(state, k, k, steps=0, **options)[0, :, 0]
      hits.append(jnp.all(jnp.sign(out) == patterns_SxD[targets_Q], axis=-1))
      finite.append(jnp.all(jnp.isfinite(out), axis=-1))
    if step < max(steps):
      state = energy.hopfield_update(state, k, **options)
  return jnp.stack([jnp.stack(hits), jnp.stack(finite)])


def interval(values):
  v = np.asarray(values, np.float64)
  half = t_quantile(v.size) * v.std(ddof=1) / math.sqrt(v.size) if v.size > 1 else math.nan
  return float(v.mean()), float(v.mean() - half), float(v.mean() + half)


def grid_rows(dim, separation, param, *, pattern_counts, steps, beta_factors, seeds,
              queries, flip):
  """One row per (M, steps, β factor, corruption): per-seed success rates, and the
  fraction of readouts that overflowed (inf/NaN: counted as failures)."""
  evaluate = jax.jit(jax.vmap(jax.vmap(  # over M, then over β
      lambda p, t, q, m, b: retrieved(p, t, q, m, b, steps=tuple(steps),
                                      separation=separation, param=param),
      in_axes=(None, None, None, None, 0)), in_axes=(None, 0, 0, 0, None)))
  betas = np.float32(beta_factors) / np.sqrt(dim)
  rates = []  # [seed, M, β, success|finite, steps, corruption]
  for seed in range(seeds):
    patterns, targets, corrupted = draw_problem(seed, dim, max(pattern_counts),
                                                pattern_counts, queries, flip)
    hits = np.asarray(evaluate(patterns, targets, corrupted, np.int32(pattern_counts), betas))
    rates.append(hits.reshape(hits.shape[:4] + (2, queries)).mean(-1))
  rates = np.stack(rates)
  rows = []
  for (i, count), (j, factor), (s, step), (c, corruption) in itertools.product(
      enumerate(pattern_counts), enumerate(beta_factors), enumerate(steps),
      enumerate(CORRUPTIONS)):
    per_seed = rates[:, i, j, 0, s, c]
    mean, low, high = interval(per_seed)
    rows.append(dict(separation=separation, separation_param=param, dim=dim, patterns=count,
                     steps=step, beta_factor=factor, corruption=corruption,
                     per_seed=per_seed.tolist(), mean=mean, ci_low=low, ci_high=high,
                     overflowed=float(1.0 - rates[:, i, j, 1, s, c].mean())))
  return rows


def capacities(rows, threshold=0.9):
  """Per curve, the largest M with mean success ≥ threshold (0 if none)."""
  curves = {}
  for row in rows:
    key = (row["separation"], row["dim"], row["steps"], row["beta_factor"], row["corruption"])
    best = curves.setdefault(key, 0)
    if row["mean"] >= threshold:
      curves[key] = max(best, row["patterns"])
  return [dict(zip(("separation", "dim", "steps", "beta_factor", "corruption"), key),
               capacity=m, threshold=threshold) for key, m in sorted(curves.items())]


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  dims = sorted({r["dim"] for r in rows})
  panels = sorted({(r["corruption"], r["beta_factor"]) for r in rows})
  separations = list(dict.fromkeys(r["separation"] for r in rows))
  steps = sorted({r["steps"] for r in rows})
  styles = ["-", "--", ":", "-."]
  fig, axes = plt.subplots(len(panels), len(dims), figsize=(4.2 * len(dims), 3.2 * len(panels)),
                           squeeze=False, sharey=True)
  for (p, (corruption, factor)), (d, dim) in itertools.product(enumerate(panels),
                                                                enumerate(dims)):
    ax = axes[p, d]
    for (si, sep), (ti, step) in itertools.product(enumerate(separations), enumerate(steps)):
      curve = sorted((r["patterns"], r["mean"], r["overflowed"]) for r in rows
                     if r["dim"] == dim and r["separation"] == sep and r["steps"] == step
                     and r["corruption"] == corruption and r["beta_factor"] == factor)
      count, mean, overflowed = map(np.array, zip(*curve))
      ax.semilogx(count, mean, styles[ti % 4], color=f"C{si}", marker=".", base=2,
                  label=f"{sep}, {step} steps")
      ax.plot(count[overflowed > 0], mean[overflowed > 0], "kx", markersize=7)
    ax.set_title(f"D={dim}, {corruption}, β={factor:g}/√D", fontsize=9)
    ax.set_xlabel("stored patterns M")
    ax.set_ylabel("retrieved (sign-exact), mean over seeds")
    ax.set_ylim(-0.05, 1.05)
  handles, labels = axes[0, 0].get_legend_handles_labels()
  handles.append(plt.Line2D([], [], color="k", marker="x", linestyle="none"))
  labels.append("readouts overflowed (inf/NaN)")
  axes[0, -1].legend(handles, labels, fontsize=6, loc="lower left")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(_):
  if FLAGS.smoke:
    dims, counts, steps, betas = [8], [1, 4], [0, 1], [1.0]
  else:
    dims = [int(d) for d in FLAGS.dims]
    counts, steps = [int(m) for m in FLAGS.patterns], [int(s) for s in FLAGS.steps]
    betas = [float(b) for b in FLAGS.beta_factors]
  start, rows = time.time(), []
  for dim, spec in itertools.product(dims, FLAGS.separations):
    separation, param = parse_separation(spec)
    rows += grid_rows(dim, separation, param, pattern_counts=counts, steps=steps,
                      beta_factors=betas, seeds=FLAGS.seeds, queries=FLAGS.queries,
                      flip=FLAGS.flip)
  result = dict(
      description="sign-exact retrieval of ±1 patterns by mha_jax.energy.hopfield_retrieve",
      flip=FLAGS.flip, queries_per_seed=FLAGS.queries, seeds=FLAGS.seeds,
      seconds=round(time.time() - start, 1), rows=rows, capacity=capacities(rows))
  with open(FLAGS.json, "w", encoding="utf-8") as f:
    json.dump(result, f, indent=1)
  for row in result["capacity"]:
    print(f"{row['separation']:>10} D={row['dim']:<3} steps={row['steps']} "
          f"β={row['beta_factor']:g}/√D {row['corruption']:<11} capacity ≥ {row['capacity']}")
  if FLAGS.plot:
    plot(rows, FLAGS.plot)


def define_flags():
  """Flags exist only when run as a script, so tests can import this module beside
  scripts that define flags of the same names."""
  flags.DEFINE_list("dims", ["16", "32", "64"], "pattern dimensions D")
  flags.DEFINE_list("patterns", ["4", "8", "16", "32", "64", "128", "256"], "stored patterns M")
  flags.DEFINE_list("steps", ["0", "1", "3"], "update steps before the readout")
  flags.DEFINE_list("separations", ["softmax", "entmax:1.5", "sparsemax", "polynomial:3",
                                    "cubic:0:0.1667"],
                    "name[:param[:param]] (cubic takes c2:c3)")
  flags.DEFINE_list("beta_factors", ["1", "4"], "β = factor/√D")
  flags.DEFINE_integer("seeds", 3, "independent draws of patterns and queries")
  flags.DEFINE_integer("queries", 32, "queries per seed and corruption")
  flags.DEFINE_float("flip", 0.2, "fraction of signs flipped in a noisy query")
  flags.DEFINE_bool("smoke", False, "a tiny grid (D 8, M 1 and 4, steps 0 and 1)")
  flags.DEFINE_string("json", "energy_capacity.json", "where the results go")
  flags.DEFINE_string("plot", None, "PNG of success rate vs M")


if __name__ == "__main__":
  define_flags()
  app.run(main)
