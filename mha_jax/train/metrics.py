"""Metric sinks: TensorBoard events (tensorboardX), a JSON-lines file that a
plotting script reads without TensorBoard, and a tqdm progress bar. Only
process 0 writes; the other processes get a writer that does nothing.
"""

from __future__ import annotations

import json
import math
import os
import time

import jax
import numpy as np
import tqdm


class MetricWriter:
  """`write(step, split, metrics)` appends to <workdir>/metrics.jsonl and tb/."""

  def __init__(self, workdir, *, total_steps, initial_step, progress_bar=True):
    self.active = jax.process_index() == 0
    self._tb = self._file = self._bar = None
    if not self.active:
      return
    from tensorboardX import SummaryWriter  # heavy import, only on the writing host
    self._tb = SummaryWriter(os.path.join(workdir, "tb"))
    self._file = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
    self._bar = tqdm.tqdm(total=total_steps, initial=initial_step, unit="step",
                          dynamic_ncols=True, disable=not progress_bar,
                          leave=False)   # the end line replaces it (no doubled last line)

  def write(self, step, split, metrics):
    if not self.active:
      return
    row = {k: float(v) for k, v in metrics.items()}
    for name, value in row.items():
      if math.isfinite(value):
        self._tb.add_scalar(f"{split}/{name}", value, step)
    self._file.write(json.dumps({"step": int(step), "split": split, "time": time.time(),
                                 **row}) + "\n")
    self._file.flush()

  def progress(self, steps_done):
    if self.active:
      self._bar.update(steps_done)

  def postfix(self, values):
    if self.active:
      self._bar.set_postfix(values)

  def message(self, text):
    if self.active:
      self._bar.write(text)

  def close(self):
    if self.active:
      self._bar.close()
      self._tb.close()
      self._file.close()


class Throughput:
  """Steps/s and examples-or-tokens/s between two `measure` calls."""

  def __init__(self, items_per_step):
    self.items_per_step = items_per_step
    self._time = time.perf_counter()

  def restart(self):
    """Exclude host work that is not training (evaluation, checkpointing)."""
    self._time = time.perf_counter()

  def measure(self, steps):
    now = time.perf_counter()
    elapsed, self._time = max(now - self._time, 1e-9), now
    return steps / elapsed, steps * self.items_per_step / elapsed


GUARDED = ("loss", "grad_norm", "param_norm")   # the updated params are finite iff their norm is


def nonfinite_fields(metrics):
  """Names in GUARDED whose value is not finite."""
  return [k for k in GUARDED if not np.isfinite(metrics[k])]


def mean_metrics(rows):
  """Host means of per-step metric dicts (without the 0/1 nonfinite flag)."""
  return {k: float(np.mean([row[k] for row in rows])) for k in rows[0] if k != "nonfinite"}
