"""Rank collapse in attention-only networks (spec §3): standard attention vs MHA.

The setting of Dong et al. (2021) and of the paper's theorem: L single-head
attention layers, no MLP, no skip connection (unless `--residual` names one),
random weights. Prints the relative rank residual ‖X − 1x̄ᵀ‖_{1,∞}/‖X‖_{1,∞}
after each layer — the median over seeds, with the 25–75 % quantiles — for each
α′, h0 policy and weight scale, and optionally saves a plot (median line,
quantile band) and a JSON/Markdown table.

    python experiments/rank_collapse.py --layers=12 --weight_scale=1,2 --plot=rank.png
    python experiments/rank_collapse.py --float64 --exact_min --json=rank.json

float32 floors at ~3e-7 (relative rounding of a residual of O(1) tokens): values
below `FLOAT32_FLOOR` are printed and drawn as "at the floor", not as a
difference between settings. `--float64` runs everything in float64 (floor ~1e-15).
`--exact_min` adds, for the first sequence of each seed, the ‖·‖_{1,∞}
minimiser over x (linear programs) next to the mean-token residual.
`--residual=convex|scaled_branch|standard --alpha=a` puts the model's
attention residual into the network, to separate its effect from H's.

The theorem's bound concerns H chained from layer 1's scores (h0 = first_scores).
Which h0 ends lower, and whether MHA ends above standard attention, depends on
weight scale and depth; RESULTS.md (f) gives the float64 medians. Read the
table, not a rule.
"""

import json
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from mha_jax import analysis

FLAGS = flags.FLAGS
flags.DEFINE_integer("layers", 12, "depth of the attention-only network")
flags.DEFINE_integer("tokens", 32, "sequence length T")
flags.DEFINE_integer("width", 64, "model width D")
flags.DEFINE_integer("batch", 8, "sequences per seed")
flags.DEFINE_integer("seeds", 4, "random networks per cell")
flags.DEFINE_list("alpha_hidden", ["0", "0.5", "0.7", "0.9"], "α′ values (0 = standard)")
flags.DEFINE_list("h0", ["zeros", "first_scores"], "hidden-state start policies")
flags.DEFINE_list("weight_scale", ["1", "2"], "weight std × √D; larger = sharper softmax")
flags.DEFINE_string("residual", None, "attention residual form in the network (default none)")
flags.DEFINE_float("alpha", 0.5, "α of --residual")
flags.DEFINE_bool("float64", False, "compute in float64 (floor ~1e-15 instead of ~3e-7)")
flags.DEFINE_bool("exact_min", False, "also the exact ‖·‖_{1,∞} minimiser (LP; slower)")
flags.DEFINE_bool("smoke", False, "3 layers, 2 seeds, small T and D: seconds")
flags.DEFINE_string("plot", None, "save a log-scale plot of the residual by layer here")
flags.DEFINE_string("json", None, "save every curve (and a .md table beside it) here")

FLOAT32_FLOOR = 3e-7
FLOAT64_FLOOR = 1e-15


def floor():
  return FLOAT64_FLOOR if FLAGS.float64 else FLOAT32_FLOOR


def curves_by_seed(alpha_hidden, h0, weight_scale):
  """Relative rank residual [seeds, L] (mean over the batch), and the exact-minimiser
  version [seeds, L] of each seed's first sequence (or None)."""
  dtype = jnp.float64 if FLAGS.float64 else jnp.float32
  run = jax.jit(analysis.attention_only_network, static_argnames=("h0", "residual"))
  curves, exact = [], []
  for seed in range(FLAGS.seeds):
    key_w, key_x = jax.random.split(jax.random.key(seed))
    width = FLAGS.width
    w = weight_scale * jax.random.normal(key_w, (FLAGS.layers, 3, width, width), dtype)
    w = w / np.sqrt(width)
    x = jax.random.normal(key_x, (FLAGS.batch, FLAGS.tokens, width), dtype)
    xs = run(x, w, alpha_hidden=alpha_hidden, h0=h0, residual=FLAGS.residual, alpha=FLAGS.alpha)
    curves.append(np.asarray(jax.vmap(analysis.relative_rank_residual)(xs).mean(axis=1)))
    if FLAGS.exact_min:
      first = np.asarray(xs[:, 0], np.float64)
      exact.append([analysis.composite_minimum(m)["value"]
                    / float(analysis.composite_norm(jnp.asarray(m))) for m in first])
  return np.array(curves), (np.array(exact) if FLAGS.exact_min else None)


def fmt(value):
  return "floor" if value < floor() else f"{value:.1e}"


def quantiles(curves):
  return {q: np.quantile(curves, q / 100, axis=0).tolist() for q in (25, 50, 75)}


def table(rows):
  """Markdown: median [25–75 %] over seeds after a few layers, per setting."""
  layers = sorted({1, max(FLAGS.layers // 3, 1), max(2 * FLAGS.layers // 3, 1), FLAGS.layers})
  head = ("| scale | h0 | α′ | " + " | ".join(f"layer {n}" for n in layers)
          + (" | exact min, last layer" if FLAGS.exact_min else "") + " |")
  lines = [head, "|" + "---|" * (3 + len(layers) + FLAGS.exact_min)]
  for row in rows:
    q = row["quantiles"]
    cells = [f"{fmt(q[50][n - 1])} [{fmt(q[25][n - 1])}, {fmt(q[75][n - 1])}]" for n in layers]
    if FLAGS.exact_min:
      cells.append(fmt(float(np.median(np.array(row["exact"])[:, -1]))))
    lines.append(f"| {row['weight_scale']:g} | {row['h0']} | {row['alpha_hidden']:g} | "
                 + " | ".join(cells) + " |")
  precision = "float64" if FLAGS.float64 else "float32"
  return (f"Median [25 %, 75 %] over {FLAGS.seeds} seeds of ‖X − 1x̄ᵀ‖/‖X‖ ({precision}; "
          f"'floor' = below {floor():.0e}, rounding, not a difference); residual: "
          f"{FLAGS.residual or 'none'}.\n\n" + "\n".join(lines) + "\n")


def plot(rows, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  scales = sorted({row["weight_scale"] for row in rows})
  fig, axes = plt.subplots(1, len(scales), figsize=(5 * len(scales), 4), squeeze=False)
  depth = np.arange(1, FLAGS.layers + 1)
  for row in rows:
    ax = axes[0, scales.index(row["weight_scale"])]
    q = {k: np.maximum(np.array(v), floor()) for k, v in row["quantiles"].items()}
    line, = ax.semilogy(depth, q[50], "-" if row["h0"] == "first_scores" else "--",
                        label=f"α′={row['alpha_hidden']:g} {row['h0']}")
    ax.fill_between(depth, q[25], q[75], color=line.get_color(), alpha=0.15)
  for ax, scale in zip(axes[0], scales):
    ax.axhspan(floor() / 3, floor(), color="grey", alpha=0.3)
    ax.text(1, floor() * 0.5, f"at the {'float64' if FLAGS.float64 else 'float32'} floor",
            fontsize=7)
    ax.set(title=f"weight scale {scale:g}", xlabel="layer", ylim=(floor() / 3, 2),
           ylabel="relative rank residual (median, 25–75 %)")
  axes[0, -1].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(_):
  if FLAGS.smoke:
    FLAGS.layers, FLAGS.tokens, FLAGS.width, FLAGS.batch, FLAGS.seeds = 3, 8, 8, 2, 2
  if FLAGS.float64:
    jax.config.update("jax_enable_x64", True)
  rows = []
  for scale in map(float, FLAGS.weight_scale):
    for h0 in FLAGS.h0:
      for alpha_hidden in map(float, FLAGS.alpha_hidden):
        curves, exact = curves_by_seed(alpha_hidden, h0, scale)
        rows.append(dict(weight_scale=scale, h0=h0, alpha_hidden=alpha_hidden,
                         curves=curves.tolist(), quantiles=quantiles(curves),
                         exact=None if exact is None else exact.tolist()))
  text = table(rows)
  print(text)
  if FLAGS.json:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.json)), exist_ok=True)
    with open(FLAGS.json, "w", encoding="utf-8") as f:
      json.dump({"flags": {k: FLAGS[k].value for k in ("layers", "tokens", "width", "seeds",
                                                        "float64", "residual", "alpha")},
                 "floor": floor(), "rows": rows}, f)
    with open(os.path.splitext(FLAGS.json)[0] + ".md", "w", encoding="utf-8") as f:
      f.write(text)
    print("saved", FLAGS.json)
  if FLAGS.plot:
    plot(rows, FLAGS.plot)
    print("saved", FLAGS.plot)


if __name__ == "__main__":
  app.run(main)
