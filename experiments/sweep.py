"""Train a grid of small models and report mean ± std over seeds against the baseline.

    python experiments/sweep.py --config=configs/sweep.py:preset=alpha_grid --outdir=sweeps/alpha_grid
    python experiments/sweep.py --config=configs/sweep.py:preset=rivals,smoke --outdir=/tmp/s

Resumable: every finished cell is one JSON in the shared cell store (--cells,
default <outdir>/../cells, one folder per training setup, so presets that list the
same cell share its one result); running the same command again trains only the
cells without one (and retries failed ones) (`--budget_minutes` stops starting
new groups after that long, so a long grid can be built up across sittings).
`--mode=vmapped` (default) trains the cells that share one program (differing in
seed, α, α′) in one vmapped step; `--mode=separate` runs `train_and_evaluate` per
cell (checkpoints under <outdir>/runs/). Writes, from every result present:
results.csv (one row per cell), summary.csv and summary.md (mean ± std over
seeds, Δ vs standard attention at the same depth with a 95 % paired t interval,
and a verdict), and heatmap.png (α × α′ grid) when the grid has one.
"""

import csv
import os
import time

from absl import app, flags
from ml_collections import config_flags

from mha_jax.sweep import aggregate, grid

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "sweep config (configs/sweep.py:preset=...)")
flags.DEFINE_string("outdir", None, "where the reports go")
flags.DEFINE_string("cells", None, "the shared cell store (default: <outdir>/../cells)")
flags.DEFINE_string("mode", None, "vmapped | separate (default: the config's)")
flags.DEFINE_float("budget_minutes", 0, "stop starting new groups after this long (0: no limit)")
flags.DEFINE_bool("report_only", False, "only aggregate the results present")
flags.mark_flags_as_required(["config", "outdir"])


def write_results_csv(results, path):
  fields = list(grid.AXES) + sorted({k for r in results for k in r["eval"]}) + [
      "final_train_loss", "steps", "seconds", "mode"]
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fields, extrasaction="ignore")
    writer.writeheader()
    for r in results:
      writer.writerow({**r["cell"], **r["eval"], **{k: r.get(k) for k in fields[-4:]}})


def cell_store(sweep, outdir, cells_root=None):
  """The ResultStore of `sweep`'s training setup under the shared cells root."""
  root = cells_root or os.path.join(os.path.dirname(os.path.abspath(outdir)), "cells")
  return grid.ResultStore(root, grid.sweep_setup(sweep))


def report(sweep, store, outdir):
  every = grid.cells(sweep.grid)
  for failure in store.failures(every):
    print(f"failed: {grid.cell_id(failure['cell'])}: {failure['error']}")
  results = store.results(every)
  if not results:
    print("no results yet")
    return []
  rows = aggregate.summarize(results, *aggregate.metric_direction(sweep.metric),
                             controls=sweep.controls)
  aggregate.holm(rows)
  write_results_csv(results, os.path.join(outdir, "results.csv"))
  aggregate.write_csv(rows, os.path.join(outdir, "summary.csv"))
  with open(os.path.join(outdir, "summary.md"), "w", encoding="utf-8") as f:
    f.write(aggregate.markdown(rows))
  if aggregate.heatmap(rows, os.path.join(outdir, "heatmap.png")):
    print("saved", os.path.join(outdir, "heatmap.png"))
  print(aggregate.markdown(rows))
  return rows


def main(_):
  sweep = FLAGS.config
  os.makedirs(FLAGS.outdir, exist_ok=True)
  store = cell_store(sweep, FLAGS.outdir, FLAGS.cells)
  if not FLAGS.report_only:
    deadline = time.time() + 60 * FLAGS.budget_minutes if FLAGS.budget_minutes else None
    trained, skipped, left = grid.run_sweep(
        grid.base_config(sweep), sweep.grid, store, mode=FLAGS.mode or sweep.mode,
        eval_steps=sweep.eval_steps, deadline=deadline,
        runs_dir=os.path.join(FLAGS.outdir, "runs"))
    print(f"cells trained {trained}, already done {skipped}, left {left}")
  report(sweep, store, FLAGS.outdir)


if __name__ == "__main__":
  app.run(main)
