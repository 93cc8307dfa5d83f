"""A resumable grid of training runs (cells) from one sweep config.

A sweep config (configs/sweep_*.py) names a base training config and the axes

    kind, alpha, alpha_hidden, residual, h0, reset_every, energy_steps, separation,
    separation_param, depth, seed

Each cell is one training run; its result is one JSON file in a `ResultStore`
(<cells root>/<digest of the training setup>/), written atomically (temp file +
rename), so a killed sweep leaves only whole results and the next invocation
trains only the cells that have none. Presets with the same training setup share
the store: a setting listed by two presets has one result. Settings that do not apply to a kind collapse (standard attention has
no α; nor does the residual x + u once α′ is set apart from α), so no cell is trained
twice.

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

from mha_jax import config_util, energy, kinds
from mha_jax.models import stack_config
from mha_jax.sweep import vmapped

AXES = ("kind", "alpha", "alpha_hidden", "residual", "h0", "reset_every", "energy_steps",
        "separation", "separation_param", "depth", "seed")
ATTENTION_AXES = ("alpha", "alpha_hidden", "residual", "h0", "reset_every", "energy_steps",
                  "separation", "separation_param")
# Hopfield-retrieval axes (issue 20): absent from a grid = the AttentionConfig default, and
# a value equal to that default collapses to None, so cells that do not set them keep the
# ids they had before these axes existed.
RETRIEVAL_DEFAULTS = {name: getattr(stack_config.AttentionConfig, name)
                      for name in ("energy_steps", "separation", "separation_param")}
VMAPPABLE = ("alpha", "alpha_hidden", "seed")
MODES = ("vmapped", "separate")


def cells(grid):
  """Distinct cells of the grid (dicts over AXES, None where an axis does not
  apply), in a stable order. `alpha_hidden` -1 ties α′ = α as the paper does.
  An optional grid entry `retrieval_kinds` names the kinds that vary the retrieval
  axes; the others keep their defaults (MHA beside Hopfield-energy heads)."""
  values = [list(grid.get(axis, (RETRIEVAL_DEFAULTS.get(axis),))) for axis in AXES]
  seen, out = set(), []
  for combo in itertools.product(*values):
    cell = dict(zip(AXES, combo))
    reads = kinds.get(cell["kind"]).reads   # the axes a kind does not read collapse
    for axis in ATTENTION_AXES:
      if axis not in reads:
        cell[axis] = None
    if cell["alpha_hidden"] is not None and cell["alpha_hidden"] < 0:
      cell["alpha_hidden"] = cell["alpha"]
    elif cell["residual"] == "standard":
      cell["alpha"] = None   # x + u reads no α once α′ is set on its own
    if cell["h0"] == "noise" and cell["reset_every"]:
      continue   # a restart would discard the random H_0 (AttentionConfig refuses it)
    if cell["kind"] not in grid.get("retrieval_kinds", (cell["kind"],)):
      cell.update(dict.fromkeys(RETRIEVAL_DEFAULTS))
    if not _collapse_retrieval(cell):
      continue
    key = cell_id(cell)
    if key not in seen:
      seen.add(key)
      out.append(cell)
  return out


def _collapse_retrieval(cell):
  """Sets retrieval axes equal to their default (or, for separation_param, to the
  separation's own default) to None; False for a parameter the separation does not
  take (softmax, sparsemax), a combination that is not a setting."""
  separation = cell["separation"] or RETRIEVAL_DEFAULTS["separation"]
  param = cell["separation_param"]
  if param is not None:
    if separation not in energy.DEFAULT_SEPARATION_PARAMS:
      return False
    if param == energy.DEFAULT_SEPARATION_PARAMS[separation]:
      cell["separation_param"] = None
  for axis, default in RETRIEVAL_DEFAULTS.items():
    if cell[axis] == default:
      cell[axis] = None
  return True


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
    if cell.get(axis) is not None:
      attention[axis] = cell[axis]
  return config


def program_key(cell):
  """Cells with equal keys compile to one program (vmappable together)."""
  return tuple((a, cell.get(a)) for a in AXES if a not in VMAPPABLE)


def sweep_setup(sweep):
  """What a sweep's cells are trained from besides their own axes: the base training
  config, its changes, the data and the eval length. Presets with equal setups
  (vit_depth and alpha_grid) share their cells."""
  as_dict = lambda v: v.to_dict() if hasattr(v, "to_dict") else v  # noqa: E731
  return {"base": sweep.base, "base_updates": as_dict(sweep.base_updates),
          "data": as_dict(sweep.data), "eval_steps": sweep.eval_steps}


def setup_digest(setup):
  return hashlib.sha1(json.dumps(setup, sort_keys=True, default=str).encode()).hexdigest()[:10]


class ResultStore:
  """One JSON per finished cell under <root>/<digest of the setup>/: every preset
  with the same setup reads and writes the same files, so a cell that two presets
  list is trained once and has one result. A failed cell leaves <id>.failed.json
  (its error) instead, and is tried again by the next run."""

  def __init__(self, root, setup):
    self.setup = setup
    self.dir = os.path.join(root, setup_digest(setup))

  def path(self, cell, suffix=".json"):
    return os.path.join(self.dir, cell_id(cell) + suffix)

  def done(self, cell):
    return os.path.exists(self.path(cell))

  def _write(self, path, record):
    if not os.path.isdir(self.dir):
      os.makedirs(self.dir)
      self._write(os.path.join(self.dir, "setup.json"), self.setup)
    fd, tmp = tempfile.mkstemp(dir=self.dir, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(record, f, indent=1)
    os.replace(tmp, path)

  def write(self, cell, result):
    self._write(self.path(cell), {"cell": cell, **result})
    if os.path.exists(self.path(cell, ".failed.json")):
      os.remove(self.path(cell, ".failed.json"))

  def write_failure(self, cell, error):
    self._write(self.path(cell, ".failed.json"), {"cell": cell, "error": error})

  def _read(self, cells, suffix):
    out = []
    for cell in cells:
      if os.path.exists(self.path(cell, suffix)):
        with open(self.path(cell, suffix), encoding="utf-8") as f:
          out.append(json.load(f))
    return out

  def results(self, cells):
    """The finished results among `cells`, in their order."""
    return self._read(cells, ".json")

  def failures(self, cells):
    """{cell, error} of the cells among `cells` whose last try failed."""
    return self._read([c for c in cells if not self.done(c)], ".failed.json")


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


def _minutes(seconds):
  return f"{seconds / 60:.1f} min"


def _metrics(result):
  return " ".join(f"{k}={v:.4f}" for k, v in sorted(result["eval"].items())
                  if isinstance(v, (int, float)))


def make_groups(todo, max_group):
  """Cells of one program (vmappable together), at most `max_group` per group."""
  by_program = {}
  for cell in todo:
    by_program.setdefault(program_key(cell), []).append(cell)
  return [g[i:i + max_group] for g in by_program.values() for i in range(0, len(g), max_group)]


def run_sweep(base, grid, store, *, mode="vmapped", eval_steps=-1, deadline=None,
              max_group=16, train_group=None, say=print, clock=time.time, runs_dir=None):
  """Trains every cell of `grid` that `store` (a ResultStore) has no result for;
  returns (trained, skipped, left) counts, `left` counting failed cells.

  Prints one line per finished cell with its metrics and an ETA (from this run's
  time per cell so far). A group whose training raises is recorded as failed
  (its error in each cell's .failed.json) and the sweep goes on; the next run
  tries it again. `deadline` (clock() seconds) stops before starting a group past
  it: the rest is left for the next invocation. At most `max_group` runs share
  one vmapped step (memory grows with it). `train_group(group) → results`
  replaces the trainer (tests)."""
  if mode not in MODES:
    raise ValueError(f"mode={mode!r}; allowed: {MODES}")
  every = cells(grid)
  todo = [c for c in every if not store.done(c)]
  skipped = len(every) - len(todo)
  if train_group is None:
    if mode == "vmapped":
      train_group = lambda g: train_group_vmapped(base, g, eval_steps)  # noqa: E731
    else:
      train_group = lambda g: train_group_separately(  # noqa: E731
          base, g, eval_steps, runs_dir or os.path.join(store.dir, "runs"))
  finished = store.results(every)
  if todo and finished:
    per_cell = sum(r.get("seconds", 0) for r in finished) / len(finished)
    say(f"{len(todo)} of {len(every)} cells to train; ≈ {_minutes(per_cell * len(todo))} "
        f"at the finished cells' {per_cell:.0f} s per cell")
  start, trained, attempted, count = clock(), 0, 0, skipped
  for group in make_groups(todo, max_group):
    if deadline is not None and clock() > deadline:
      break
    try:
      results = train_group(group)
    except Exception as error:  # noqa: BLE001 — recorded per cell, retried next run
      results, message = None, f"{type(error).__name__}: {error}"
    attempted += len(group)
    eta = (clock() - start) / attempted * (len(todo) - attempted)
    for cell, result in zip(group, results or [None] * len(group)):
      count += 1
      if result is None:
        store.write_failure(cell, message)
        word = f"FAILED ({message}); recorded, tried again next run"
      else:
        store.write(cell, result)
        trained += 1
        word = _metrics(result)
      say(f"[{count}/{len(every)}] {cell_id(cell)}: {word} — ETA {_minutes(eta)}")
  return trained, skipped, len(todo) - trained
