"""The host side of training: step, log, evaluate, checkpoint, stop."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp

from mha_jax.train import checkpoint, metrics, sharding


def evaluate(eval_fn, params, eval_input, start_state, max_batches, data_sh):
  """One pass (or `max_batches`) over the eval split; summed, then summarised."""
  eval_input.set_state(start_state)
  batches = eval_input if max_batches < 0 else itertools.islice(eval_input, max_batches)
  totals = None
  for host_batch in batches:
    sums = eval_fn(params, sharding.to_global(host_batch, data_sh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  info = eval_input.info   # the eval split's own words-per-token ratio
  return metrics.summarize_eval(jax.device_get(totals), info.kind,
                                info.original_tokens_per_token)


class TrainLoop:
  """Runs steps `initial_step+1 .. total_steps`. Per-step metrics stay on device
  and are fetched every `log_every` steps and before every save, so a NaN is
  caught (and named) before it can reach a checkpoint."""

  def __init__(self, config, workdir, info, schedule, manager, mesh, initial_step):
    self.config, self.schedule, self.manager = config, schedule, manager
    self.data_sh = sharding.batch_sharding(mesh)
    self.initial_step = initial_step
    tokens = info.seq_len if info.kind == "text" else 1
    self.items_name, self.items_label = (("tokens_per_sec", "tok/s") if info.kind == "text"
                                         else ("examples_per_sec", "img/s"))
    self.throughput = metrics.Throughput(config.batch_size * tokens)
    self.writer = metrics.MetricWriter(workdir, total_steps=config.total_steps,
                                       initial_step=initial_step,
                                       progress_bar=config.get("progress_bar", True))

  def log_train(self, step, pending):
    means, bad_step = metrics.mean_train_metrics(pending)
    if bad_step is not None:
      raise FloatingPointError(
          f"non-finite loss at step {bad_step}: training stopped; the last checkpoint "
          f"(step {self.manager.latest_step()}) is untouched")
    steps_per_sec, items_per_sec = self.throughput.measure(len(pending))
    row = dict(means, learning_rate=float(self.schedule(step - 1)),
               steps_per_sec=steps_per_sec, **{self.items_name: items_per_sec})
    self.writer.write(step, "train", row)
    self.writer.progress(len(pending), {"loss": f"{means['loss']:.4f}",
                                        "step/s": f"{steps_per_sec:.2f}",
                                        self.items_label: f"{items_per_sec:.0f}"})

  def run(self, state, train_fn, eval_fn, train_input, eval_input, preemption):
    cfg = self.config
    eval_start = eval_input.get_state() if eval_input is not None else None
    step, pending, last_eval = self.initial_step, [], {}
    while step < cfg.total_steps:
      state, step_metrics = train_fn(state, sharding.to_global(next(train_input), self.data_sh))
      step += 1
      pending.append((step, step_metrics))
      preempted = preemption.requested   # read once: a signal may land mid-iteration
      save = step == cfg.total_steps or preempted or (
          cfg.checkpoint_every and step % cfg.checkpoint_every == 0)
      evaluate_now = eval_input is not None and not preempted and (
          step % cfg.eval_every == 0 or step == cfg.total_steps)
      if save or evaluate_now or step % cfg.log_every == 0:
        self.log_train(step, pending)
        pending = []
      if evaluate_now:
        last_eval = evaluate(eval_fn, state["params"], eval_input, eval_start,
                             cfg.eval_steps, self.data_sh)
        self.writer.write(step, "eval", last_eval)
        self.writer.message(f"step {step} eval: " + ", ".join(
            f"{k}={v:.4g}" for k, v in last_eval.items()))
      if save:
        checkpoint.save(self.manager, step, state, train_input.get_state(), cfg)
      if preempted:
        self.writer.message(f"{preempted} at step {step}: checkpoint saved, exiting")
        break
      if save or evaluate_now:
        self.throughput.restart()   # steps/s counts training only
    return last_eval
