"""Row (k) of RESULTS.md (issue 22 §4): which reading of the paper's residual
reproduces its α ablation. Read from the `residual_reading` cells (summarised by
mha_jax.sweep.aggregate in results.py); no number here is typed in.

The paper (ViT-Ti, CIFAR-100, 12 and 24 layers): α = 1 → chance, α = 0 → 69.89,
α = 0.5 → 72.03, standard attention 73.08. Its pattern, as tested here per
residual form and depth:
  (1) α = 1 is at chance (attention's output never reaches the residual stream);
  (2) α = 0 trains (well above chance) but below α = 0.5;
  (3) α = 0.5 is not worse than standard attention (Holm-corrected, within the row).
"""

import numpy as np

CHANCE = 1 / 10        # sklearn digits: 10 classes
CHANCE_MARGIN = 0.05   # "at chance": mean accuracy within 5 points of chance
FORMS = ("convex", "scaled_branch", "standard")


def _by_alpha(rows, residual, depth):
  return {r["alpha"]: r for r in rows if r["kind"] == "hopfield"
          and r["residual"] == residual and r["depth"] == depth}


def pattern(rows, chance=CHANCE):
  """(markdown note, summary word): per residual form and depth, the three parts of
  the paper's pattern, and the forms that show all three at every depth trained."""
  lines = ["| residual | depth | α = 0 | α = 0.5 | α = 1 | standard attention | "
           "(1) α = 1 at chance | (2) 0 trains, below 0.5 | (3) α = 0.5 not worse |",
           "|---|---|---|---|---|---|---|---|---|"]
  reproduced = {}
  for form in FORMS:
    for depth in sorted({r["depth"] for r in rows}):
      by_alpha = _by_alpha(rows, form, depth)
      if form == "standard" and None in by_alpha:   # x + u reads no α: one setting
        by_alpha = {a: by_alpha[None] for a in (0.0, 0.5, 1.0)}
      base = [r for r in rows if r["kind"] == "standard" and r["depth"] == depth]
      if not base or not all(a in by_alpha for a in (0.0, 0.5, 1.0)):
        continue
      zero, half, one = (by_alpha[a] for a in (0.0, 0.5, 1.0))
      checks = (one["mean"] <= chance + CHANCE_MARGIN,
                chance + CHANCE_MARGIN < zero["mean"] < half["mean"],
                half.get("verdict") != "worse")
      reproduced.setdefault(form, []).append(all(checks))
      cells = [f"{r['mean']:.3f} ± {r['std']:.3f}" if np.isfinite(r["std"]) else
               f"{r['mean']:.3f}" for r in (zero, half, one, base[0])]
      lines.append(f"| {form} | {depth} | " + " | ".join(cells) + " | "
                   + " | ".join("yes" if c else "no" for c in checks) + " |")
  if not reproduced:
    return "", "not yet run"
  forms = [f for f, ok in reproduced.items() if all(ok)]
  depths = sorted({r["depth"] for r in rows if r["kind"] == "hopfield"})
  word = (f"{', '.join(forms)} reproduce{'s' if len(forms) == 1 else ''} the paper's pattern"
          if forms else "no residual form reproduces the paper's whole pattern")
  word += f" (depths trained: {', '.join(map(str, depths))})"
  note = (f"Chance = {chance:.3f}; \"at chance\" = mean ≤ chance + {CHANCE_MARGIN}; part (2) "
          "compares means (α = 0 and α = 0.5 are not tested against each other); part (3) is "
          "the Holm-corrected verdict of the table below. Under "
          "x + u the residual reads no α, so its one setting fills the three α columns "
          "(its pattern cannot hold by construction).\n\n" + "\n".join(lines) + "\n")
  return note, word


def recipe_note(short_rows, long_rows):
  """The convex settings that row (a) trains at depth 12 with its short recipe (400 steps,
  lr 3e-3, 20 warm-up steps), beside the same settings here: recipe vs form."""
  lines = []
  for row in long_rows:
    twin = [r for r in short_rows if r["kind"] == "hopfield" and r["residual"] == row["residual"]
            and r["depth"] == row["depth"] and r["alpha"] == row["alpha"]
            and r["alpha_hidden"] == row["alpha_hidden"] and r["h0"] == row["h0"]]
    if row["kind"] == "hopfield" and twin:
      lines.append(f"{row['residual']}, α = α′ = {row['alpha']}, depth {row['depth']}: "
                   f"{twin[0]['mean']:.3f} ± {twin[0]['std']:.3f} with row (a)'s recipe, "
                   f"{row['mean']:.3f} ± {row['std']:.3f} with this one")
  if not lines:
    return ""
  return ("The same settings in row (a) (400 steps, lr 3e-3, 20 warm-up steps): "
          + "; ".join(lines) + ".\n")

