"""Build RESULTS.md: run every sweep and instrument behind it, resumably, within a budget.

    python experiments/results.py --outdir=sweeps --budget_minutes=120
    python experiments/results.py --outdir=sweeps --report_only      # rewrite RESULTS.md

Each row of RESULTS.md is one claim (issue 13, a–g; issue 20, h–j) with the command
that regenerates its numbers printed above them. Sweeps run smallest first; each
finished cell is kept in the shared store <outdir>/cells/ (one result per cell
identity, whichever presets list it), so an interrupted or budget-limited build
continues where it stopped the next time; sweep.py prints a line per finished
cell with an ETA, and a failed cell is recorded with its error and tried again by
the next run. A row whose runs have not finished says what is missing and gives
its command: no number in RESULTS.md comes from anywhere but the files this
script reads. A run that trains writes <outdir>/regeneration.json (its wall time
per command), from which RESULTS.md states the regeneration time.
"""

import datetime
import json
import os
import subprocess
import sys
import time

from absl import app, flags

import energy_results
import rank_results
import residual_results
from mha_jax import config_util, kinds
from mha_jax.sweep import aggregate, grid, profiles

FLAGS = flags.FLAGS
flags.DEFINE_string("outdir", "sweeps", "where every sweep keeps its cells and reports")
flags.DEFINE_float("budget_minutes", 120, "stop starting new work after this long")
flags.DEFINE_bool("report_only", False, "only rewrite RESULTS.md from the results present")
flags.DEFINE_string("results", "RESULTS.md", "the file to write")
flags.DEFINE_list("only", [], "row ids to run (default: all, in the order below)")

SWEEP = "python experiments/sweep.py --config=configs/sweep.py:preset={p} --outdir={o}/{p}"

# id, claim, presets, the paper's figure; cheapest first (fewest compiled programs)
ROWS = [
    ("c", "the α × α′ grid (the paper ties α = α′)", ["alpha_grid"],
     "ViT-Ti CIFAR-100: α = 0.5, best α′ = 0.2 → 72.29, α′ = 1 → 66.10; α′ = 0.5, "
     "best α = 0.6 → 72.66"),
    ("a", "ViT: MHA (α = α′ ∈ {0.5, 0.7}) beats standard attention, at depth 6 and 12, "
     "for each residual form", ["vit_depth"],
     "CIFAR-100 top-1 std / α .5 / α .7: Ti 73.08 / 72.03 / 72.57, S 74.49 / 75.42 / 75.59"),
    ("e", "MHA vs the other cross-layer and rank-collapse remedies ("
     + ", ".join(kinds.get(k).label for k in kinds.names(rival=True)) + "), "
     "shallow and deep, with and without skip connections", ["rivals", "rivals_noskip"],
     "no skip, CIFAR-10 depth 2 / 8: standard 63.72 / 48.59, MHA 79.75 / 80.34"),
    ("d", "H_0 policy and reset-every-N (N = 1 has no memory across layers)",
     ["h0_reset"], "— (open question of seed 003)"),
    ("g", "a task outside vision and text: multi-query associative recall (a Hopfield "
     "network's own task; synthetic, since no sequence data set ships offline)", ["recall"],
     "— (not in the paper)"),
    ("b", "small GPT on Shakespeare (characters and GPT-2 BPE): MHA lowers perplexity",
     ["gpt_char", "gpt_bpe"], "GPT-2 WikiText-103 ppl: Small 22.87 → 20.70, Medium 20.85 → 19.61"),
    ("j", "non-linear heads (attention from a Hopfield energy, 1 and 3 updates × softmax, "
     "entmax 1.5, sparsemax, cubic) vs standard attention and MHA, at equal parameters",
     ["energy_heads", "energy_heads_char", "energy_heads_recall"], energy_results.PAPER),
    ("k", "which residual reading trains like the paper's α ablation: convex / scaled branch / "
     "x + u at α ∈ {0, 0.5, 1} (α′ = 0.5), ViT depth 12 and 24, a 4× longer schedule with "
     "warm-up", ["residual_reading"],
     "ViT-Ti CIFAR-100: α = 1 → chance, α = 0 → 69.89, α = 0.5 → 72.03, standard 73.08"),
]
ALL_KINDS_ROWS = ("j",)   # rows whose summary gives every kind's verdict, not only MHA's
# Facts true by construction that a reader of a row needs (no measured number here)
ROW_NOTES = {
    "b": "`gpt_bpe` is a smaller grid than `gpt_char` (batch 8, depth 6, α = 0.5, residual "
         "convex and x + u): a GPT-2 BPE token costs ~15× a character on CPU (50k-entry "
         "logits).",
    "d": "reset_every = 0 (never) is N = L = 8. h0 = first_scores with reset_every = 1 sets "
         "H_n = s_n in every layer, i.e. standard attention: its Δ must be exactly 0, a check "
         "of the implementation. h0 = zeros with reset_every = 1 is standard attention at "
         "temperature 1/(1 − α′).",
    "e": "Without skip connections ReZero has no residual branch to gate and MHA's residual "
         "form does not apply, so `rivals_noskip` ReZero is standard attention (equal numbers "
         "are expected) and MHA differs from it only by the carried H. AttnRes has no additive "
         "skip to remove (its depth softmax over the embedding and earlier outputs replaces "
         "it), so its `rivals_noskip` cells train the same model as its `rivals` cells; "
         "DenseFormer without skips keeps its depth-weighted averages. mHC (static "
         "hyper-connections, n = 4 streams) likewise has no additive skip: its "
         "doubly stochastic stream mixing is its skip, so its `rivals_noskip` cells train "
         "the same model as its `rivals` cells; at init it is the plain x + F(x) stack.",
    "j": "Depth 2, residual x + u, width 32; ViT digits 200 steps, character GPT 150 steps, "
         "associative recall 500 steps (sized for 2 shared CPU cores). Hopfield-energy heads "
         "add no parameters (mha_jax/energy.py: ξ ← Kᵀ sep(β K ξ) from ξ⁰ = q, then "
         "sep(β K ξ)ᵀ V); cubic is φ(s) = s + s³/6, entmax α = 1.5.",
    "k": "ViT on digits, width 32, 1,600 steps (4× rows a/c) with 160 warm-up steps at "
         "learning rate 1e-3. convex: x ← α x + (1 − α) u; scaled branch: x ← x + (1 − α) u; "
         "x + u ignores α. α = 1 removes attention's output from the residual stream in both "
         "α-reading forms, so the class token never sees a patch.",
    "g": "P = 4 key-value pairs, 16 keys, 16 values (chance = 1/16 = 0.0625), GPT width 32, "
         "1,000 steps; accuracy = fraction of the 4 answers recalled.",
}
# Sweeps whose cells carry trained-network depth profiles for row (f)
PROFILE_PRESETS = {"vit_depth": "a", "rivals": "e", "rivals_noskip": "e"}   # preset: its row
ENERGY_PROFILE_PRESETS = {"energy_heads": "j", "energy_heads_char": "j",
                          "energy_heads_recall": "j"}


def sweep_command(preset):
  return SWEEP.format(p=preset, o=FLAGS.outdir)


def run(command, minutes_left):
  """Runs one command; returns its wall seconds."""
  print("$", command, flush=True)
  budget = f" --budget_minutes={minutes_left:.1f}" if "sweep.py" in command else ""
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  start = time.time()
  subprocess.run(command.replace("python ", sys.executable + " ", 1) + budget, shell=True,
                 check=False, env=env)
  return time.time() - start


def preset_cells(preset):
  """(sweep config, every cell, the shared store) of one preset."""
  sweep = config_util.load_config(f"configs/sweep.py:preset={preset}")
  store = grid.ResultStore(os.path.join(FLAGS.outdir, "cells"), grid.sweep_setup(sweep))
  return sweep, grid.cells(sweep.grid), store


def preset_results(preset):
  _, cells, store = preset_cells(preset)
  return store.results(cells)


def counted_verdict(rows):
  """One verdict from the rows' per-setting words ("better" / "worse" / no
  difference, each Holm-corrected within the row); settings equal to the baseline
  by construction are not counted, only checked."""
  words = [r["verdict"] for r in rows if r.get("verdict") and not r.get("control")]
  controls = [r for r in rows if r.get("control")]
  better, worse = words.count("better"), words.count("worse")
  same = words.count("no difference at this scale")
  counts = f"{better} better, {worse} worse, {same} no difference"
  passed = sum(r["verdict"] == aggregate.EQUAL_BY_CONSTRUCTION for r in controls)
  checked = f"{passed} of {len(controls)} exactly equal"
  if not words:
    return f"equal by construction, not counted — {checked}" if controls else "no comparison yet"
  if controls:
    counts += f" ({len(controls)} equal by construction not counted: {checked})"
  if better and not worse:
    return f"supports — {counts}"
  if worse and not better:
    return f"contradicts — {counts}"
  if better and worse:
    return f"mixed — {counts}"
  return f"no difference at this scale — {counts}"


def row_verdict(rows):
  """The verdict of a row's settings against standard attention; one per kind (MHA
  first) when the row compares several, so a rival's win is not read as MHA's."""
  compared = sorted({r["kind"] for r in rows if r.get("verdict")},
                    key=lambda k: (k != "hopfield", k))
  if len(compared) <= 1:
    return counted_verdict(rows)
  return "; ".join(f"{kinds.get(k).label}: " + counted_verdict(
      [r for r in rows if r["kind"] == k]) for k in compared)


def summarize_preset(preset):
  """(rows or None, markdown of the cells' state) of one preset, uncorrected."""
  sweep, cells, store = preset_cells(preset)
  command = sweep_command(preset)
  results, failed = store.results(cells), store.failures(cells)
  failures = "".join(f"\n- failed on its last try (retried by the next run): "
                     f"`{grid.cell_id(f['cell'])}`: {f['error']}" for f in failed)
  if not results:
    return None, f"```\n{command}\n```\nnot yet run ({len(cells)} cells).\n{failures}"
  rows = aggregate.summarize(results, *aggregate.metric_direction(sweep.metric),
                             controls=sweep.controls)
  seconds = sum(r.get("seconds", 0) for r in results)
  text = (f"```\n{command}\n```\n{len(results)} of {len(cells)} cells finished "
          f"({seconds / 60:.0f} minutes of training on 2 CPU cores)"
          + ("" if len(results) == len(cells) else " — the rest not yet run") + "."
          + failures + "\n\n")
  return rows, text


def sweep_section(rows, text, preset):
  """Markdown of one preset: its state, the table, the α × α′ heat map."""
  png = os.path.join(FLAGS.outdir, preset, "heatmap.png")
  if rows is None:
    return text
  text += aggregate.markdown(rows)
  if os.path.exists(png):
    text += (f"\n![`{preset}`: mean {rows[0]['metric']} over seeds on the α × α′ values "
             f"it trains, one panel per residual form, h0 and depth]({png})\n")
  return text


def profile_section(presets=PROFILE_PRESETS, kinds_judged=("hopfield",)):
  """(markdown, verdict of `kinds_judged`) of the trained networks' depth curves
  ({preset: its row}); "better" = less collapse: a higher last-layer rank residual.
  Each measure's rows over every preset are one Holm family."""
  parts, tables = [], {}
  for preset in presets:
    sweep, _, _ = preset_cells(preset)
    results = preset_results(preset)
    tables[preset] = {m: profiles.summarize(results, m, sweep.controls) for m in profiles.MEASURES}
  for measure in profiles.MEASURES:
    aggregate.holm([r for t in tables.values() for r in t[measure]])
  rows_seen = []
  for preset, row in presets.items():
    rows = tables[preset]
    if not rows["rank_residual"]:
      parts.append(f"### trained: `{preset}`\n\nnot yet run: `{sweep_command(preset)}`.\n")
      continue
    rows_seen += rows["rank_residual"]
    png = os.path.join(FLAGS.outdir, preset, "profiles.png")
    os.makedirs(os.path.dirname(png), exist_ok=True)
    profiles.plot(rows, png, title=preset)
    parts.append(f"### trained: `{preset}` (the cells of row {row}"
                 f", first eval batch)\n\n**Verdict:** {row_verdict(rows['rank_residual'])}"
                 "\n\n" + profiles.markdown(rows["rank_residual"]) + "\n"
                 + profiles.markdown(rows["cosine"]) + f"\n![depth profiles]({png})\n")
  if not rows_seen:
    return "\n".join(parts), "not yet run"
  judged = [r for r in rows_seen if r["kind"] in kinds_judged + ("standard",)]
  return "\n".join(parts), row_verdict(judged) + " (better = less collapse)"


HEADER = """# Results at CPU scale

Every number below is read from result files by `python experiments/results.py
--report_only`, and regenerated by the command printed above it (the whole file:
`python experiments/results.py --outdir=sweeps --budget_minutes=120`, resumable).
Models are tiny (width 32; offline sklearn digits, Shakespeare characters or GPT-2
BPE, synthetic associative recall; a few hundred steps), trained on 2 CPU cores;
mean ± std over seeds (sample std), Δ = run − standard attention at the same depth
and seeds with a 95 % paired t interval. A setting listed by several presets is one
cell, trained once: its numbers are the same wherever it appears. Every verdict
compares the row's settings with standard attention; the settings of a row are one
family, corrected with Holm–Bonferroni (p (Holm), the paired t test's p-value
adjusted for the row's number of settings), and "better" / "worse" need p (Holm) <
0.05 (the intervals shown are the uncorrected 95 % ones, so one may exclude 0
while the corrected verdict is "no difference"). Counts of settings better / worse
/ no different are given, so a row with "contradicts" for α′ = 1 and "no
difference" elsewhere reads as such; settings equal to standard attention by
construction are checked (Δ exactly 0) and not counted. Where a row compares
several kinds, each kind has its own verdict, and the summary gives MHA's. A
verdict is about this scale: the paper's claims are for larger models trained far
longer.
"""


def rounding_note():
  """What rounding alone does to one setting (experiments/group_rounding.py): its
  final accuracy per vmapped group size K (equal K gave equal bits)."""
  path = os.path.join(FLAGS.outdir, "group_rounding", "rounding.json")
  if not os.path.exists(path):
    return ""
  with open(path, encoding="utf-8") as f:
    data = json.load(f)
  parts = []
  for seed in sorted({g["seed"] for g in data["groups"]}):
    by_k = {}
    for g in (g for g in data["groups"] if g["seed"] == seed):
      by_k.setdefault(g["K"], set()).add(round(g["accuracy"], 4))
    parts.append(f"seed {seed}: " + ", ".join(
        f"K = {k}: " + " / ".join(f"{a:.4f}" for a in sorted(v)) for k, v in sorted(by_k.items())))
  return (f"\nRounding alone: one setting ({data['residual']}, α = α′ = {data['alpha']}, depth "
          f"{data['depth']}, {data['steps']} steps) trained in vmapped groups of K runs, with "
          f"the same seed, data and init, ends at accuracy {'; '.join(parts)} — groups of "
          "equal K, whatever the mates, gave equal bits (`python experiments/group_rounding.py`,"
          f" {path}). This spread is part of the seed-to-seed noise above; a cell keeps the "
          "result of the group that trained it (its `mode`).\n")


def cost_note(presets):
  """Training cost from the cells' own times (each shared cell once) and the last
  training run's wall time (regeneration.json)."""
  finished = {}
  for preset in presets:
    _, cells, store = preset_cells(preset)
    for cell in cells:
      finished.update({store.path(cell): r for r in store.results([cell])})
  hours = sum(r.get("seconds", 0) for r in finished.values()) / 3600
  text = (f"Cost: {len(finished)} training runs, {hours:.2f} h of training on 2 CPU cores "
          "(the sum of the times the cells' own runs measured, under whatever load the "
          "machine had; a vmapped group's time is shared by its K runs): the time to "
          "regenerate every cell. Each rerun of the command trains only the cells that "
          "have no result.")
  path = os.path.join(FLAGS.outdir, "regeneration.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      last = json.load(f)
    text += (f" The last run of results.py ({last['date']}) took {last['seconds'] / 3600:.2f} h "
             f"wall and trained {last['cells_trained']} cells ({path}).")
  return text + "\n"


def write_report():
  sections = []   # (row id, summary line, section text)
  for row_id, claim, presets, paper in ROWS:
    state = {p: summarize_preset(p) for p in presets}
    aggregate.holm([r for rows, _ in state.values() for r in rows or ()])
    body, summary = [], []
    for preset, (rows, text) in state.items():
      mha = [r for r in rows or () if r["kind"] in ("standard", "hopfield")
             or row_id in ALL_KINDS_ROWS]
      summary.append((f"{preset}: " if len(presets) > 1 else "")
                     + (row_verdict(mha) if rows else "not yet run"))
      body.append(f"### `{preset}`\n\n**Verdict:** "
                  f"{row_verdict(rows) if rows else 'not yet run'}\n\n"
                  + sweep_section(rows, text, preset))
    note = f"{ROW_NOTES[row_id]}\n\n" if row_id in ROW_NOTES else ""
    if row_id == "k":   # the row's question is a pattern across α, not a Δ per setting
      pattern_text, pattern_word = residual_results.pattern(state[presets[0]][0] or [])
      note += pattern_text + "\n" + residual_results.recipe_note(
          summarize_preset("vit_depth")[0] or [], state[presets[0]][0] or []) + "\n"
      summary = [pattern_word]
    if row_id in ALL_KINDS_ROWS:
      note += energy_results.divergence_note({p: preset_results(p) for p in presets},
                                             aggregate.describe)
      depth_text, depth_word = profile_section(ENERGY_PROFILE_PRESETS, tuple(kinds.KINDS))
      body.append(f"### depth profiles (token cosine, rank residual; row (f)'s measures)\n\n"
                  f"**Verdict (last layer vs standard):** {depth_word}\n\n{depth_text}")
    sections.append((row_id, f"| ({row_id}) | {claim} | {paper} | {'; '.join(summary)} |",
                     f"## ({row_id}) {claim}\n\nPaper: {paper}.\n\n{note}" + "\n".join(body)))
  rank_text, rank_word = rank_results.section(FLAGS.outdir)
  trained_text, trained_word = profile_section()
  claim = ("rank collapse slows with MHA: attention-only networks with random weights, and "
           "trained networks' token cosine and rank residual vs depth")
  sections.append(("f", f"| (f) | {claim} | theorem; paper Fig. (token cosine) | random: "
                   f"{rank_word}; trained: {trained_word} |",
                   f"## (f) {claim}\n\nPaper: MHA's bound decays exponentially, not doubly "
                   f"exponentially.\n\n### random weights\n\n{rank_text}\n**Verdict, trained (MHA vs "
                   f"standard, last layer):** {trained_word}\n\n{trained_text}"))
  sections += energy_results.sections(FLAGS.outdir)
  sections.sort()
  cost = cost_note([p for _, _, presets, _ in ROWS for p in presets]) + rounding_note()
  summary = ["## Summary\n", "| row | claim | paper | verdict here |", "|---|---|---|---|"]
  text = "\n".join([HEADER, cost, "\n".join(summary + [line for _, line, _ in sections]) + "\n"]
                   + [section for _, _, section in sections])
  with open(FLAGS.results, "w", encoding="utf-8") as f:
    f.write(text)
  print("wrote", FLAGS.results)


def count_done():
  """Finished cells in the shared store (every setup)."""
  return sum(name.endswith(".json") and not name.endswith(".failed.json")
             and name != "setup.json"
             for _, _, names in os.walk(os.path.join(FLAGS.outdir, "cells")) for name in names)


def regenerate():
  """Runs the missing work within the budget; records its wall time."""
  start, before = time.time(), count_done()
  work = [(rid, sweep_command(p)) for rid, _, presets, _ in ROWS for p in presets]
  if not os.path.exists(os.path.join(FLAGS.outdir, "rank_collapse", "rank.json")):
    work.insert(0, ("f", rank_results.RANK.format(o=FLAGS.outdir)))
  work = energy_results.missing_work(FLAGS.outdir) + work
  commands = {}
  for row_id, command in work:
    minutes_left = FLAGS.budget_minutes - (time.time() - start) / 60
    if minutes_left <= 0:
      print(f"budget of {FLAGS.budget_minutes} min spent; the rest is left for the next run")
      break
    if not FLAGS.only or row_id in FLAGS.only:
      os.makedirs(os.path.join(FLAGS.outdir, "rank_collapse"), exist_ok=True)
      commands[command] = run(command, minutes_left)
  record = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                seconds=time.time() - start, cells_trained=count_done() - before,
                commands=commands)
  with open(os.path.join(FLAGS.outdir, "regeneration.json"), "w", encoding="utf-8") as f:
    json.dump(record, f, indent=1)


def main(_):
  if not FLAGS.report_only:
    regenerate()
  write_report()


if __name__ == "__main__":
  app.run(main)
