"""RESULTS.md rows (h) and (i) of issue 20 (attention from a Hopfield energy), read
from the artefacts of experiments/energy_capacity.py and experiments/context_wells.py;
row (j) is a sweep row of results.py. Every number here comes from those JSON files.
"""

import os

import numpy as np

import _artefact

CAPACITY = ("python experiments/energy_capacity.py --json={o}/energy_capacity/energy_capacity.json "
            "--plot={o}/energy_capacity/energy_capacity.png")
WELLS = ("python experiments/context_wells.py --depth=3 --train_steps=300 "
         "--json={o}/context_wells/context_wells.json --plot={o}/context_wells/context_wells.png")
CAPACITY_CLAIM = ("retrieval capacity of the energy heads: stored patterns vs dimension, "
                  "update steps and separation, noisy and half-masked queries")
WELLS_CLAIM = ("context wells in trained models: per layer and head, updates to a fixed point, "
               "energy drop and well types")
PAPER = "— (abstract only: no numbers; the reading is this codebase's, mha_jax/energy.py)"


def _curve_key(row):
  return (row["dim"], row["steps"], row["beta_factor"], row["corruption"])


def capacity_verdict(capacity):
  """Per separation, against softmax on the same curve (D, steps, β, corruption): in
  how many curves its capacity is higher / lower / equal."""
  softmax = {_curve_key(r): r["capacity"] for r in capacity if r["separation"] == "softmax"}
  parts = []
  for separation in dict.fromkeys(r["separation"] for r in capacity):
    if separation == "softmax":
      continue
    pairs = [(r["capacity"], softmax[_curve_key(r)]) for r in capacity
             if r["separation"] == separation and _curve_key(r) in softmax]
    higher = sum(a > b for a, b in pairs)
    lower = sum(a < b for a, b in pairs)
    parts.append(f"{separation} higher in {higher}, lower in {lower}, equal in "
                 f"{len(pairs) - higher - lower}")
  return "vs softmax, of the (D, steps, β, corruption) curves: " + "; ".join(parts)


def capacity_table(capacity):
  """One line per (separation, steps); one column per (corruption, β, D)."""
  columns = sorted({(r["corruption"], r["beta_factor"], r["dim"]) for r in capacity})
  lines = ["| separation | steps | " + " | ".join(f"{c} β={b:g}/√D D={d}" for c, b, d in columns)
           + " |", "|---|---|" + "---|" * len(columns)]
  by_key = {(r["separation"], r["steps"], r["corruption"], r["beta_factor"], r["dim"]):
            r["capacity"] for r in capacity}
  for separation, steps in dict.fromkeys((r["separation"], r["steps"]) for r in capacity):
    lines.append(f"| {separation} | {steps} | " + " | ".join(
        str(by_key[(separation, steps) + c]) for c in columns) + " |")
  return "\n".join(lines) + "\n"


def capacity_section(outdir):
  """(markdown, verdict) of row (h)."""
  data, command, path, pending = _artefact.read(CAPACITY, outdir, "energy_capacity",
                                                "energy_capacity.json")
  if pending:
    return pending
  verdict = capacity_verdict(data["capacity"])
  overflowed = sum(r["overflowed"] > 0 for r in data["rows"])
  png = os.path.join(outdir, "energy_capacity", "energy_capacity.png")
  return (f"**Verdict:** {verdict}\n\n```\n{command}\n```\n"
          f"{data['seeds']} seeds × {data['queries_per_seed']} queries per corruption "
          f"(noisy: {data['flip']:g} of the signs flipped; half-masked: half the coordinates "
          f"zeroed); {data['seconds']:.0f} s. Capacity = the largest stored-pattern count M "
          f"of the grid whose mean sign-exact retrieval over seeds is ≥ "
          f"{data['capacity'][0]['threshold']:g} (0: none; a lower bound limited by the grid). "
          f"{overflowed} of {len(data['rows'])} (M, steps, β, corruption, D, separation) "
          "points had readouts overflow (inf/NaN, counted as failures; the cubic energy is "
          f"unbounded below). Per-seed rates and 95 % intervals: {path}.\n\n"
          + capacity_table(data["capacity"]) + f"\n![retrieval vs stored patterns]({png})\n"), \
      verdict


def head_table(record, wells):
  """One line per (layer, head): mean over seeds."""
  def mean(field):
    return np.mean([[layer[field] for layer in s["layers"]] for s in record["seeds"]], 0)
  steps, top, converged, drop = (mean(f) for f in ("mean_steps", "max_steps", "converged",
                                                   "energy_drop"))
  start, fixed = mean("start_wells"), mean("fixed_point_wells")
  names = " / ".join(wells)
  lines = [f"| layer | head | updates mean | max | converged | energy drop | {names} "
           f"(attention) | {names} (fixed point) |", "|---|---|---|---|---|---|---|---|"]
  for n, h in np.ndindex(steps.shape):
    lines.append(f"| {n + 1} | {h} | {steps[n, h]:.2f} | {top[n, h]:.0f} | "
                 f"{converged[n, h]:.3f} | {drop[n, h]:.4f} | "
                 + " / ".join(f"{x:.3f}" for x in start[n, h]) + " | "
                 + " / ".join(f"{x:.3f}" for x in fixed[n, h]) + " |")
  return "\n".join(lines) + "\n", dict(start=start.mean((0, 1)), fixed=fixed.mean((0, 1)),
                                      converged=converged.mean(), steps=steps.mean())


def wells_section(outdir):
  """(markdown, verdict) of row (i)."""
  data, command, path, pending = _artefact.read(WELLS, outdir, "context_wells",
                                                "context_wells.json")
  if pending:
    return pending
  parts, words = [], []
  for record in data["models"]:
    table, means = head_table(record, data["well_types"])
    evals = "; ".join(f"seed {s['seed']}: " + ", ".join(
        f"{k} {v:.4f}" for k, v in sorted(s["eval"].items())) for s in record["seeds"])
    shares = lambda w: ", ".join(  # noqa: E731
        f"{name} {x:.2f}" for name, x in zip(data["well_types"], means[w]))
    words.append(f"{record['model']}: {means['converged']:.3f} of queries converged (mean "
                 f"{means['steps']:.1f} updates); wells of the trained attention "
                 f"{shares('start')} → at the fixed point {shares('fixed')}")
    parts.append(f"### `{record['model']}` (setup of `{record['preset']}`, depth "
                 f"{record['depth']}, {record['train_steps']} steps, standard attention, "
                 f"β = {record['beta']:.4f}; {record['queries']} queries of the first eval "
                 f"batch; eval {evals})\n\n" + table)
  verdict = "; ".join(words)
  png = os.path.join(outdir, "context_wells", "context_wells.png")
  return (f"**Verdict:** {verdict}\n\n```\n{command}\n```\nξ ← Kᵀ softmax(β K ξ) from "
          f"ξ⁰ = q with each layer's own q, k and mask, until ‖Δξ‖ ≤ {data['tol']:g} (at most "
          f"{data['max_steps']} updates); energy drop E(q) − E(ξ*) of E(ξ) = −β⁻¹ lse(β K ξ) + "
          f"½‖ξ‖²; well type by how many keys hold {data['well_mass']:.0%} of the weight "
          "(single: one; global: more than half the allowed keys; metastable: between), of "
          "the trained attention's weights and at the fixed point (a causal query that sees "
          "one key is a single well by construction: 1/T of the GPT's queries). Means over "
          f"{len(data['models'][0]['seeds'])} seeds (models trained from different "
          f"initialisations); {path}.\n\n" + "\n".join(parts)
          + f"\n![context wells per layer and head]({png})\n"), verdict


def sections(outdir):
  """[(row id, summary line, section)] of rows (h) and (i)."""
  out = []
  for row_id, claim, (text, word) in (("h", CAPACITY_CLAIM, capacity_section(outdir)),
                                      ("i", WELLS_CLAIM, wells_section(outdir))):
    out.append((row_id, f"| ({row_id}) | {claim} | {PAPER} | {word} |",
                f"## ({row_id}) {claim}\n\nPaper: {PAPER}.\n\n{text}"))
  return out


def missing_work(outdir):
  """[(row id, command)] for rows (h), (i) whose JSON is missing; makes their folders."""
  work = []
  for row_id, command, folder, name in (
      ("h", CAPACITY, "energy_capacity", "energy_capacity.json"),
      ("i", WELLS, "context_wells", "context_wells.json")):
    if not os.path.exists(os.path.join(outdir, folder, name)):
      os.makedirs(os.path.join(outdir, folder), exist_ok=True)
      work.append((row_id, command.format(o=outdir)))
  return work


def divergence_note(results_by_preset, describe):
  """A line naming the settings whose training loss ended non-finite (NaN / inf), per
  preset, with how many of their seeds did; "" if none."""
  parts = []
  for preset, results in results_by_preset.items():
    counts = {}
    for r in results:
      if not np.isfinite(r.get("final_train_loss", 0.0)):
        key = describe(r["cell"])
        counts[key] = counts.get(key, 0) + 1
    parts += [f"`{preset}` {key} ({n} seeds)" for key, n in counts.items()]
  if not parts:
    return ""
  return ("Diverged (final training loss not finite; their metric is what the broken model "
          "scores): " + "; ".join(parts) + ".\n\n")
