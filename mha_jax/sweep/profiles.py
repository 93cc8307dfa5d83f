"""Depth curves of trained networks (RESULTS.md row f): what each sweep cell's
`profile` holds — per layer, the mean pairwise token cosine (raw and centred) and
the relative rank residual ‖X − 1x̄ᵀ‖_{1,∞}/‖X‖_{1,∞} of its residual stream —
as mean ± std over seeds per setting, with the last layer compared against
standard attention at the same depth and seeds (paired 95 % t interval, as
`aggregate` does for the final metric).

Less rank collapse reads as a *higher* rank residual and a *lower* cosine.
"""

from __future__ import annotations

import numpy as np

from mha_jax.sweep import aggregate

MEASURES = ("rank_residual", "cosine", "centred_cosine")
# The streams are float32: ratios and cosines closer than this are rounding (the float32
# floor of the rank residual is ~3e-7, experiments/rank_collapse.py), not a difference.
RESOLUTION = 1e-6
HIGHER_MEANS_LESS_COLLAPSE = {"rank_residual": True, "cosine": False, "centred_cosine": False}


def summarize(results, measure, controls=()):
  """One dict per setting with a profile: axes, n, mean/std per layer [L], and
  delta/ci_low/ci_high/p_value/verdict of the last layer against standard attention
  (uncorrected: pass a family's rows to `aggregate.holm`)."""
  curves = {}
  for row in results:
    if "profile" in row:
      key = aggregate.setting_key(row["cell"])
      curves.setdefault(key, {})[row["cell"]["seed"]] = np.asarray(row["profile"][measure])
  out = []
  for key, by_seed in curves.items():
    cell = dict(zip(aggregate.SETTING_AXES, key))
    stacked_SxL = np.stack([by_seed[s] for s in sorted(by_seed)])
    row = dict(cell, measure=measure, n=len(by_seed), mean=stacked_SxL.mean(0),
               std=stacked_SxL.std(0, ddof=1) if len(by_seed) > 1 else np.full(
                   stacked_SxL.shape[1], np.nan))
    base = curves.get(aggregate.baseline_key(curves, cell))
    if base is not None and cell["kind"] != "standard":
      seeds = sorted(set(by_seed) & set(base))
      diffs = [by_seed[s][-1] - base[s][-1] for s in seeds]
      aggregate.compare(row, [0.0 if abs(d) < RESOLUTION else d for d in diffs],
                        HIGHER_MEANS_LESS_COLLAPSE[measure], controls)
    out.append(row)
  return out


def markdown(rows):
  """Setting, depth, mean ± std at the first, middle and last layer, Δ last [CI]."""
  if not rows:
    return "(no profiles)\n"
  measure = rows[0]["measure"]
  lines = [f"| setting | depth | {measure}: layer 1 | middle | last | Δ last vs standard "
           "[95 % paired CI] | p (Holm) | less collapse? |", "|---|---|---|---|---|---|---|---|"]
  for row in aggregate.display_order(rows):
    layers = len(row["mean"])
    cells = [f"{row['mean'][i]:.3f} ± {row['std'][i]:.3f}" for i in (0, layers // 2 - 1, -1)]
    delta = aggregate.delta_text(row, "+.3f")
    word = {"better": "less", "worse": "more", "no difference at this scale": "no difference"
            }.get(row.get("verdict"), row.get("verdict", ""))
    lines.append(f"| {aggregate.describe(row)} | {row['depth']} | " + " | ".join(cells)
                 + f" | {delta} | {aggregate.p_text(row)} | {word} |")
  return "\n".join(lines) + "\n"


def plot(rows_by_measure, path, title=""):
  """One panel per (measure, depth): mean ± std over seeds against layer."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  depths = sorted({r["depth"] for rows in rows_by_measure.values() for r in rows})
  measures = [m for m in MEASURES if rows_by_measure.get(m)]
  if not depths or not measures:
    return False
  fig, axes = plt.subplots(len(measures), len(depths), squeeze=False,
                           figsize=(5 * len(depths), 3.2 * len(measures)))
  for i, measure in enumerate(measures):
    for j, depth in enumerate(depths):
      ax = axes[i][j]
      for row in (r for r in rows_by_measure[measure] if r["depth"] == depth):
        layer = np.arange(1, len(row["mean"]) + 1)
        line, = ax.plot(layer, row["mean"], marker=".", label=aggregate.describe(row),
                        linestyle="--" if row["kind"] == "standard" else "-")
        ax.fill_between(layer, row["mean"] - row["std"], row["mean"] + row["std"],
                        color=line.get_color(), alpha=0.15)
      ax.set(xlabel="layer", ylabel=measure, title=f"{title} depth {depth}".strip())
  axes[0][-1].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True
