"""The host side of training: step, log, evaluate, checkpoint, stop."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from mha_jax.train import checkpoint, metrics, sharding


class NonFiniteError(FloatingPointError):
  """A step produced a non-finite loss, gradient or parameter; nothing of it was saved."""


def evaluate(eval_fn, task, params, eval_input, start_state, max_batches, data_sh):
  """One pass (or `max_batches`) over the eval split; summed, then summarised."""
  eval_input.set_state(start_state)
  batches = eval_input if max_batches < 0 else itertools.islice(eval_input, max_batches)
  totals = None
  for host_batch in batches:
    sums = eval_fn(params, sharding.to_global(host_batch, data_sh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return task.summarize(jax.device_get(totals), eval_input.info)


class TrainLoop:
  """Runs steps `initial_step+1 .. total_steps`. Per-step metrics stay on device
  and are fetched every `log_every` steps and before every save, so a non-finite
  step is caught (and named) before it can reach a checkpoint."""

  def __init__(self, config, task, writer, schedule, manager, mesh, initial_step,
               utilization=None, step_profiler=None):
    self.config, self.task, self.writer = config, task, writer
    self.utilization, self.step_profiler = utilization, step_profiler
    self.schedule, self.manager = schedule, manager
    self.data_sh = sharding.batch_sharding(mesh)
    self.initial_step = initial_step
    self.skipped = 0
    self.throughput = metrics.Throughput(config.batch_size * task.items_per_example)

  def _stop_message(self, step, bad, values):
    last = self.manager.latest_step()
    where = (f"the last good checkpoint is step {last} (intact)" if last is not None
             else "no checkpoint was saved")
    shown = ", ".join(f"{k}={values[k]:.4g}" for k in metrics.GUARDED)
    return (f"step {step}: non-finite {' and '.join(bad)} ({shown}); training stopped "
            f"before saving it; {where}")

  def _finite_rows(self, pending):
    """Fetched per-step metrics of the finite steps; skips (up to
    config.max_skipped_steps) or stops at a non-finite one."""
    rows = []
    for (step, _), values in zip(pending, jax.device_get([m for _, m in pending])):
      bad = metrics.nonfinite_fields(values)
      if not bad:
        rows.append(values)
        continue
      if self.skipped >= self.config.max_skipped_steps:
        raise NonFiniteError(self._stop_message(step, bad, values))
      self.skipped += 1
      self.writer.message(f"step {step}: non-finite {' and '.join(bad)}: batch skipped "
                          f"({self.skipped} of at most {self.config.max_skipped_steps})")
    return rows

  def log_train(self, step, pending):
    rows = self._finite_rows(pending)
    steps_per_sec, items_per_sec = self.throughput.measure(len(pending))
    self.writer.progress(len(pending))
    if not rows:
      return
    means = metrics.mean_metrics(rows)
    row = dict(means, learning_rate=float(self.schedule(step - 1)),
               steps_per_sec=steps_per_sec, skipped_steps=self.skipped,
               **{self.task.throughput_name: items_per_sec})
    if self.utilization is not None:   # per device: items/s, model TFLOP/s, MFU
      row.update(self.utilization.row(steps_per_sec))
    self.writer.write(step, "train", row)
    self.writer.postfix({"loss": f"{means['loss']:.4f}", "step/s": f"{steps_per_sec:.2f}",
                         self.task.throughput_unit: f"{items_per_sec:.0f}"})

  def run(self, state, train_fn, eval_fn, train_input, eval_input, preemption, first_batch):
    """Trains from `state`; `first_batch` is the batch the step was compiled with.
    Returns the last eval metrics ({} if none) and the last step trained."""
    cfg = self.config
    eval_start = eval_input.get_state() if eval_input is not None else None
    step, pending, last_eval = self.initial_step, [], {}
    batch = first_batch
    while step < cfg.total_steps:
      if batch is None:
        batch = sharding.to_global(next(train_input), self.data_sh)
      if self.step_profiler:
        self.step_profiler.before_step(step + 1)
      with jax.profiler.StepTraceAnnotation("train", step_num=step + 1):
        state, step_metrics = train_fn(state, batch)
      batch = None
      step += 1
      if self.step_profiler:
        self.step_profiler.after_step(step, step_metrics)
      pending.append((step, step_metrics))
      stop = preemption.poll()   # {process: signal}: the same at every process, this step
      save = step == cfg.total_steps or bool(stop) or (
          cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
      evaluate_now = eval_input is not None and not stop and (
          step % cfg.eval_every == 0 or step == cfg.total_steps)
      if save or evaluate_now or step % cfg.log_every == 0:
        self.log_train(step, pending)
        pending = []
      if evaluate_now:
        last_eval = evaluate(eval_fn, self.task, state["params"], eval_input, eval_start,
                             cfg.eval_steps, self.data_sh)
        self.writer.write(step, "eval", last_eval)
        self.writer.message(f"step {step} eval: " + ", ".join(
            f"{k}={v:.4g}" for k, v in last_eval.items()))
      if save:
        checkpoint.save(self.manager, step, state, train_input.get_state(), cfg)
      if stop:
        self.writer.message(preemption.stop_message(stop, step))
        return last_eval, step
      if save or evaluate_now:
        self.throughput.restart()   # steps/s counts training only
    return last_eval, step
