"""The host loop with a scripted step function: when it logs, evaluates, saves
and stops, and that a non-finite step never reaches a checkpoint."""

import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import config_util

from mha_jax.train import loop, metrics, sharding, tasks
from mha_jax.train.preemption import Preemption

INFO = types.SimpleNamespace(modality="text", vocab_size=5, seq_len=4, original_tokens_per_token=None)


class Input:
  """Endless batches of ones; its state is the number drawn."""

  def __init__(self):
    self.drawn, self.info = 0, INFO

  def __iter__(self):
    return self

  def __next__(self):
    self.drawn += 1
    return {"inputs": np.ones((2, 4), np.int32)}

  def get_state(self):
    return {"drawn": self.drawn}

  def set_state(self, state):
    self.drawn = state["drawn"]


class Manager:
  def __init__(self):
    self.saved = []

  def save(self, step, force, args):
    del force
    self.saved.append((step, args["data"].item.state))   # the per-process iterator state

  def latest_step(self):
    return self.saved[-1][0] if self.saved else None


def scripted_step(grad_norms):
  """A train_fn whose step n reports grad_norm grad_norms.get(n, 1.0)."""
  def train_fn(state, batch):
    step = int(state["step"]) + 1
    values = {"loss": 2.0 / step, "accuracy": 0.5, "grad_norm": grad_norms.get(step, 1.0),
              "param_norm": 3.0, "nonfinite": 0}
    metrics_now = {k: jnp.asarray(v) for k, v in values.items()}
    return {"step": jnp.asarray(step), "params": {}}, metrics_now
  return train_fn


def eval_fn(params, batch):
  del params, batch
  return {"loss": jnp.asarray(2.0), "correct": jnp.asarray(1.0), "weight": jnp.asarray(4.0)}


def run(tmp_path, grad_norms=(), preemption=None, **overrides):
  config = config_util.base_config()
  config.update(total_steps=10, batch_size=2, log_every=2, eval_every=5, eval_steps=1,
                checkpoint_every=4, progress_bar=False, **overrides)
  mesh = sharding.make_mesh(dict(data=1), jax.devices()[:1])
  writer = metrics.MetricWriter(str(tmp_path), total_steps=10, initial_step=0,
                                progress_bar=False)
  manager = Manager()
  runner = loop.TrainLoop(config, tasks.LanguageModelling(INFO), writer, lambda s: 0.1,
                          manager, mesh, initial_step=0)
  try:
    result = runner.run({"step": jnp.asarray(0), "params": {}}, scripted_step(dict(grad_norms)),
                        eval_fn, Input(), Input(), preemption or Preemption(), None)
  finally:
    writer.close()
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  return result, manager.saved, rows


def test_cadence_of_logs_evals_and_saves(tmp_path):
  (last_eval, step), saved, rows = run(tmp_path)
  assert step == 10 and last_eval == pytest.approx(
      {"loss": 0.5, "accuracy": 0.25, "perplexity": np.exp(0.5)})
  assert [(r["step"], r["split"]) for r in rows] == [
      (2, "train"), (4, "train"), (5, "train"), (5, "eval"), (6, "train"), (8, "train"),
      (10, "train"), (10, "eval")]
  assert rows[0]["loss"] == pytest.approx((2.0 + 1.0) / 2)   # mean of steps 1 and 2
  assert saved == [(4, {"drawn": 4}), (8, {"drawn": 8}), (10, {"drawn": 10})]


def test_nonfinite_grad_norm_with_finite_loss_is_never_saved(tmp_path):
  with pytest.raises(loop.NonFiniteError) as error:
    run(tmp_path, grad_norms={8: float("nan")})
  assert str(error.value) == (
      "step 8: non-finite grad_norm (loss=0.25, grad_norm=nan, param_norm=3); training "
      "stopped before saving it; the last good checkpoint is step 4 (intact)")


def test_nonfinite_before_any_checkpoint_says_so(tmp_path):
  with pytest.raises(loop.NonFiniteError, match="step 1: non-finite grad_norm .* no checkpoint "
                                                "was saved$"):
    run(tmp_path, grad_norms={1: float("inf")})


def test_skipped_steps_are_counted_and_left_out_of_the_means(tmp_path):
  _, saved, rows = run(tmp_path, grad_norms={3: float("nan")}, max_skipped_steps=1)
  train_rows = {r["step"]: r for r in rows if r["split"] == "train"}
  assert train_rows[4]["loss"] == pytest.approx(2.0 / 4) and train_rows[4]["skipped_steps"] == 1
  assert saved[-1][0] == 10
  with pytest.raises(loop.NonFiniteError, match="step 6"):
    run(tmp_path, grad_norms={3: float("nan"), 6: float("nan")}, max_skipped_steps=1)


def test_preemption_saves_the_current_step_and_returns(tmp_path):
  preemption = Preemption()
  preemption.requested = "SIGTERM"
  (_, step), saved, _ = run(tmp_path, preemption=preemption)
  assert step == 1 and saved == [(1, {"drawn": 1})]
