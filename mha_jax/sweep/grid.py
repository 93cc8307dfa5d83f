"""A resumable grid of training runs (cells) from one sweep config.

A sweep config (configs/sweep_*.py) names a base training config and the axes

    kind, alpha, alpha_hidden, residual, h0, reset_every, depth, seed

Each cell is one training run; its result is one JSON file under
<outdir>/cells/, written atomically (temp file + rename), so a killed sweep
leaves only whole results and the next invocation trains only the cells that
have none. Settings that do not apply to a kind collapse (standard attention has
no α), so no cell is trained twice.

Cells that share one program (same kind, residual, h0, reset, depth) and differ
only in seed, α, α′ are trained together by `vmapped.VmappedGroup` in
mode="vmapped", or one by one by `train_and_evaluate` in mode="separate".
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import tempfile
import time

import ml_collections

from mha_jax import kinds
from mha_jax.sweep import vmapped
from mha_jax.train import config_util

AXES = ("kind", "alpha", "alpha_hidden", "residual", "h0", "reset_every", "depth", "seed")
ATTENTION_AXES = ("alpha", "alpha_hidden", "residual", "h0", "reset_every")
VMAPPABLE = ("alpha", "alpha_hidden", "seed")
MODES = ("vmapped", "separate")


def cells(grid):
  """Distinct cells of the grid (dicts over AXES, None where an axis does not
  apply), in a stable order. `alpha_hidden` -1 ties α′ = α as the paper does."""
  values = [list(grid[axis]) for axis in AXES]
  seen, out = set(), []
  for combo in itertools.product(*values):
    cell = dict(zip(AXES, combo))
    reads = kinds.get(cell["kind"]).reads   # the axes a kind does not read collapse
    for axis in ATTENTION_AXES:
      if axis not in reads:
        cell[axis] = None
    if cell["alpha_hidden"] is not None and cell["alpha_hidden"] < 0:
      cell["alpha_hidden"] = cell["alpha"]
    if cell["h0"] == "noise" and cell["reset_every"]:
      continue   # a restart would discard the random H_0 (AttentionConfig refuses it)
    key = cell_id(cell)
    if key not in seen:
      seen.add(key)
      out.append(cell)
  return out


def cell_id(cell):
  """Readable, file-system-safe and unique: the set axes, then a short hash."""
  text = ",".join(f"{a}={cell[a]}" for a in AXES if cell.get(a) is not None)
  return text.replace("=", "").replace(",", "_") + "-" + hashlib.sha1(
      text.encode()).hexdigest()[:8]


def merge(config, updates):
  """Nested update: {"optim": {"learning_rate": x}} changes only that field."""
  for key, value in updates.items():
    if hasattr(value, "items"):
      merge(config[key], value)
    else:
      config[key] = value
  return config


def base_config(sweep):
  """The training config every cell of `sweep` (configs/sweep.py) starts from."""
  config = config_util.load_config(sweep.base)
  if sweep.data:   # another dataset: its own whole data block, not the base's fields
    fields = sweep.data.to_dict()
    config.data = config_util.data_config(fields.pop("name"), **fields)
  return merge(config, sweep.base_updates)


def cell_config(base, cell):
  """The training config of one cell: the base config with the cell's values."""
  config = ml_collections.ConfigDict(base.to_dict())
  config.seed = cell["seed"]
  config.model.num_layers = cell["depth"]
  attention = config.model.attention
  attention.kind = cell["kind"]
  for axis in ATTENTION_AXES:
    if cell[axis] is not None:
      attention[axis] = cell[axis]
  return config


def program_key(cell):
  """Cells with equal keys compile to one program (vmappable together)."""
  return tuple((a, cell[a]) for a in AXES if a not in VMAPPABLE)


class ResultStore:
  """One JSON per finished cell under <outdir>/cells/."""

  def __init__(self, outdir):
    self.dir = os.path.join(outdir, "cells")
    os.makedirs(self.dir, exist_ok=True)

  def path(self, cell):
    return os.path.join(self.dir, cell_id(cell) + ".json")

  def done(self, cell):
    return os.path.exists(self.path(cell))

  def write(self, cell, result):
    fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump({"cell": cell, **result}, f, indent=1)
    os.replace(tmp, self.path(cell))

  def read_all(self):
    rows = []
    for name in sorted(os.listdir(self.dir)):
      if name.endswith(".json"):
        with open(os.path.join(self.dir, name), encoding="utf-8") as f:
          rows.append(json.load(f))
    return rows


def train_group_vmapped(base, group, eval_steps):
  """Trains the cells of one program together; returns one result per cell."""
  first = group[0]
  config = cell_config(base, first)
  settings = [vmapped.RunSetting(c["seed"], c["alpha"], c["alpha_hidden"]) for c in group]
  start = time.perf_counter()
  runner = vmapped.VmappedGroup(config, settings)
  losses = runner.train(config.total_steps)
  evals = runner.evaluate(eval_steps)
  seconds = time.perf_counter() - start
  profile = runner.depth_profile()
  return [{"eval": evals[k], "final_train_loss": float(losses[-1, k]),
           "steps": int(config.total_steps), "seconds": seconds / len(group),
           "mode": f"vmapped×{len(group)}",
           "profile": {name: curves[k] for name, curves in profile.items()}}
          for k in range(len(group))]


def train_group_separately(base, group, eval_steps, workdir_root):
  from mha_jax.train import train_and_evaluate  # heavy, and only this mode needs it
  results = []
  for cell in group:
    config = cell_config(base, cell)
    config.eval_steps = eval_steps
    config.eval_every = config.total_steps   # one evaluation, at the end
    start = time.perf_counter()
    evals = train_and_evaluate(config, os.path.join(workdir_root, cell_id(cell)))
    results.append({"eval": dict(evals), "steps": int(config.total_steps),
                    "seconds": time.perf_counter() - start, "mode": "separate"})
  return results


def run_sweep(base, grid, outdir, *, mode="vmapped", eval_steps=-1, deadline=None,
              max_group=16, train_group=None, say=print):
  """Trains every cell without a result; returns (trained, skipped, left) counts.

  `deadline` (time.time() seconds) stops before starting a group past it: the
  rest is left for the next invocation. At most `max_group` runs share one
  vmapped step (memory grows with it). `train_group(group) → results` replaces
  the trainer (tests)."""
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}; allowed: {MODES}")
  store = ResultStore(outdir)
  todo = [c for c in cells(grid) if not store.done(c)]
  skipped = len(cells(grid)) - len(todo)
  if train_group is None:
    if mode == "vmapped":
      train_group = lambda g: train_group_vmapped(base, g, eval_steps)  # noqa: E731
    else:
      train_group = lambda g: train_group_separately(  # noqa: E731
          base, g, eval_steps, os.path.join(outdir, "runs"))
  by_program = {}
  for cell in todo:
    by_program.setdefault(program_key(cell), []).append(cell)
  groups = [g[i:i + max_group] for g in by_program.values() for i in range(0, len(g), max_group)]
  trained = 0
  for group in groups:
    if deadline is not None and time.time() > deadline:
      break
    say(f"training {len(group)} cell(s): {cell_id(group[0])} …")
    for cell, result in zip(group, train_group(group)):
      store.write(cell, result)
      trained += 1
  return trained, skipped, len(todo) - trained
