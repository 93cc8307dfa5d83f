"""Sweep results → mean ± std over seeds, and a paired comparison with the baseline.

For each setting (a cell without its seed) the main metric's mean, sample std
(ddof = 1) and median over seeds; against the baseline (standard attention at the
same depth, the same seeds) the per-seed differences d_s = run − baseline, their
mean and a 95 % paired t interval  mean(d) ± t_{0.975, n−1} · sd(d)/√n.
The per-comparison verdict says "better" / "worse" only when that interval
excludes 0. A table or a RESULTS.md row tests many settings at once, so `holm`
corrects the family (Holm–Bonferroni on the paired t tests' p-values, which
controls the chance of any false "better"/"worse" at 5 % without assuming the
tests independent) and the verdict words follow the corrected p-values; the
intervals shown stay the uncorrected 95 % ones. Settings equal to the baseline
by construction (`controls`) are checked for Δ = 0 exactly and left out of the
family and of the counts.
"""

from __future__ import annotations

import csv
import math

import numpy as np

from mha_jax.sweep import grid as grid_lib

SETTING_AXES = tuple(a for a in grid_lib.AXES if a != "seed")
CONDITION_AXES = ("depth",)   # a baseline matches a run on these


def main_metric(results):
  """('perplexity', False) for text results, ('accuracy', True) for images."""
  if results and "perplexity" in results[0]["eval"]:
    return "perplexity", False
  return "accuracy", True


HIGHER_IS_BETTER = {"accuracy": True, "perplexity": False, "loss": False}


def metric_direction(metric):
  """(metric, higher_better) for a named metric; "" → (None, None): main_metric's choice."""
  if not metric:
    return None, None
  if metric not in HIGHER_IS_BETTER:
    raise ValueError(f"metric={metric!r}; allowed: {sorted(HIGHER_IS_BETTER)} or ''")
  return metric, HIGHER_IS_BETTER[metric]


def setting_key(cell):
  return tuple(cell.get(a) for a in SETTING_AXES)


def baseline_key(keys, cell):
  """The setting key among `keys` that is standard attention under `cell`'s
  conditions (CONDITION_AXES), or None."""
  return next((k for k in keys if k[0] == "standard" and all(
      dict(zip(SETTING_AXES, k))[a] == cell[a] for a in CONDITION_AXES)), None)


def by_setting(results, metric):
  """{setting key: {seed: metric value}}."""
  out = {}
  for row in results:
    out.setdefault(setting_key(row["cell"]), {})[row["cell"]["seed"]] = row["eval"][metric]
  return out


def t_quantile(n):
  from scipy import stats  # only aggregation needs scipy
  return float(stats.t.ppf(0.975, n - 1))


def paired_interval(diffs):
  """(mean, lower, upper) of the 95 % paired t interval; bounds NaN for n < 2."""
  d = np.asarray(diffs, np.float64)
  if d.size < 2:
    return float(d.mean()) if d.size else math.nan, math.nan, math.nan
  half = t_quantile(d.size) * d.std(ddof=1) / math.sqrt(d.size)
  return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def paired_p_value(diffs):
  """Two-sided p of the paired t test of mean(d) = 0 (1 / 0 when all d are equal)."""
  from scipy import stats
  d = np.asarray(diffs, np.float64)
  if d.size < 2:
    return math.nan
  sd = d.std(ddof=1)
  if sd == 0:
    return 1.0 if d.mean() == 0 else 0.0
  return float(2 * stats.t.sf(abs(d.mean()) / (sd / math.sqrt(d.size)), d.size - 1))


def holm_adjust(p_values):
  """Holm–Bonferroni adjusted p-values, in the input order (NaN stays NaN)."""
  order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
  adjusted, running = list(p_values), 0.0
  for rank, (p, i) in enumerate(order):
    running = max(running, min(1.0, (len(order) - rank) * p))
    adjusted[i] = running
  return adjusted


EQUAL_BY_CONSTRUCTION = "= baseline by construction ✓"
BROKEN_CONTROL = "≠ baseline, though equal by construction: an implementation error"


def holm(rows, level=0.05):
  """Corrects one family in place: every row with a p-value (controls excluded)
  gets p_holm and a verdict from it and the sign of Δ."""
  tested = [r for r in rows if "p_value" in r and not r.get("control")]
  for row, p in zip(tested, holm_adjust([r["p_value"] for r in tested])):
    row["p_holm"] = p
    if math.isnan(p):
      row["verdict"] = "n < 2 seeds"
    elif p < level and row["delta"] != 0:
      row["verdict"] = "better" if (row["delta"] > 0) == row["higher_better"] else "worse"
    else:
      row["verdict"] = "no difference at this scale"
  return rows


def is_control(cell, controls):
  return any(all(cell.get(k) == v for k, v in dict(c).items()) for c in controls or ())


def compare(row, diffs, higher_better, controls=()):
  """Adds Δ, its 95 % interval, the paired t p-value and a per-comparison verdict."""
  mean, lower, upper = paired_interval(diffs)
  row.update(n_paired=len(diffs), delta=mean, ci_low=lower, ci_high=upper,
             p_value=paired_p_value(diffs), higher_better=higher_better,
             verdict=verdict(lower, upper, higher_better))
  if is_control(row, controls):
    row.update(control=True, verdict=EQUAL_BY_CONSTRUCTION if diffs and not any(diffs)
               else BROKEN_CONTROL)
  return row


def verdict(lower, upper, higher_better):
  if math.isnan(lower):
    return "n < 2 seeds"
  if lower > 0 or upper < 0:
    return "better" if (lower > 0) == higher_better else "worse"
  return "no difference at this scale"


def summarize(results, metric=None, higher_better=None, controls=()):
  """One dict per setting: axes, n, mean, std, median, and Δ vs baseline (its
  uncorrected verdict: pass the rows of a family to `holm`)."""
  if metric is None:
    metric, higher_better = main_metric(results)
  values = by_setting(results, metric)
  settings = {key: dict(zip(SETTING_AXES, key)) for key in values}
  rows = []
  for key, seeds in values.items():
    cell = settings[key]
    v = np.array([seeds[s] for s in sorted(seeds)], np.float64)
    row = dict(cell, metric=metric, n=int(v.size), mean=float(v.mean()),
               std=float(v.std(ddof=1)) if v.size > 1 else math.nan,
               median=float(np.median(v)))
    base_key = baseline_key(settings, cell)
    if base_key is not None and cell["kind"] != "standard":
      paired = sorted(set(seeds) & set(values[base_key]))
      compare(row, [seeds[s] - values[base_key][s] for s in paired], higher_better, controls)
    rows.append(row)
  return rows


COLUMNS = SETTING_AXES + ("metric", "n", "mean", "std", "median", "n_paired", "delta",
                          "ci_low", "ci_high", "p_value", "p_holm", "verdict")


def write_csv(rows, path):
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)


def describe(row):
  parts = [row["kind"]]
  for axis in grid_lib.ATTENTION_AXES:
    if row.get(axis) is not None:
      parts.append(f"{axis}={row[axis]}")
  return " ".join(parts)


def _fmt(x, spec=".4f"):
  return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def display_order(rows):
  """By depth, the baseline first, then settings by name."""
  return sorted(rows, key=lambda r: (r["depth"], r["kind"] != "standard", describe(r)))


def delta_text(row, spec="+.4f"):
  """'baseline', '—' (no paired baseline) or 'Δ [low, high]'."""
  if row["kind"] == "standard":
    return "baseline"
  if "delta" not in row:
    return "—"
  return f"{row['delta']:{spec}} [{_fmt(row['ci_low'], spec)}, {_fmt(row['ci_high'], spec)}]"


def p_text(row):
  """The Holm-corrected p-value, '' where there is none (baseline, control)."""
  return "" if "p_holm" not in row else _fmt(row["p_holm"], ".3f")


def markdown(rows):
  """Table: setting, depth, n, mean ± std, median, Δ vs baseline [95 % CI], Holm p,
  verdict."""
  if not rows:
    return "(no results)\n"
  metric = rows[0]["metric"]
  lines = [f"| setting | depth | seeds | {metric} mean ± std | median | Δ vs standard "
           "[95 % paired CI] | p (Holm) | verdict |", "|---|---|---|---|---|---|---|---|"]
  for row in display_order(rows):
    delta = delta_text(row)
    lines.append(f"| {describe(row)} | {row['depth']} | {row['n']} | {row['mean']:.4f} ± "
                 f"{_fmt(row['std'])} | {row['median']:.4f} | {delta} | {p_text(row)} | "
                 f"{row.get('verdict', '')} |")
  return "\n".join(lines) + "\n"


def alpha_grid(rows):
  """{(residual, h0, depth): (alphas, alpha_hiddens, mean matrix [α, α′])} of MHA rows."""
  panels = {}
  for row in rows:
    if row["kind"] == "hopfield":
      panels.setdefault((row["residual"], row["h0"], row["depth"], row["reset_every"]),
                        {})[(row["alpha"], row["alpha_hidden"])] = row["mean"]
  out = {}
  for key, cells in panels.items():
    alphas = sorted({a for a, _ in cells})
    hiddens = sorted({h for _, h in cells})
    matrix = np.full((len(alphas), len(hiddens)), np.nan)
    for (a, h), value in cells.items():
      matrix[alphas.index(a), hiddens.index(h)] = value
    out[key] = (alphas, hiddens, matrix)
  return out


def heatmap(rows, path):
  """The paper's ablation layout: mean metric over seeds on the α × α′ grid."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = {k: v for k, v in alpha_grid(rows).items() if v[2].size > 1}
  if not panels:
    return False
  fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
  for ax, ((residual, h0, depth, reset), (alphas, hiddens, matrix)) in zip(axes[0], panels.items()):
    image = ax.imshow(matrix, origin="lower", cmap="viridis")
    ax.set_xticks(range(len(hiddens)), [f"{h:g}" for h in hiddens])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    for i, j in np.ndindex(matrix.shape):
      if not np.isnan(matrix[i, j]):
        ax.text(j, i, f"{matrix[i, j]:.3f}", ha="center", va="center", fontsize=7, color="w")
    ax.set(xlabel="α′ (hidden state)", ylabel="α (residual)",
           title=f"{rows[0]['metric']}: depth {depth}, {residual}, h0={h0}"
           + (f", reset {reset}" if reset else ""))
    fig.colorbar(image, ax=ax, shrink=0.8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return True
