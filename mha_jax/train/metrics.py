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

from mha_jax import data


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
                          dynamic_ncols=True, disable=not progress_bar)

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

  def progress(self, steps_done, postfix):
    if self.active:
      self._bar.update(steps_done)
      self._bar.set_postfix(postfix, refresh=False)

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


def mean_train_metrics(pending):
  """Host means of buffered per-step device metrics, and the first non-finite step."""
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), metrics in zip(pending, fetched):
    if not np.isfinite(metrics["loss"]):
      return None, step
  means = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
  return means, None


def summarize_eval(sums, kind, original_tokens_per_token=None):
  """loss, top-1 and (text) perplexity from summed eval counts."""
  weight = max(float(sums["weight"]), 1.0)
  loss = float(sums["loss"]) / weight
  out = {"loss": loss, "accuracy": float(sums["correct"]) / weight}
  if kind == "text":
    out["perplexity"] = data.perplexity(loss)
    if original_tokens_per_token:
      out["perplexity_original"] = data.perplexity(loss, original_tokens_per_token)
  return out
