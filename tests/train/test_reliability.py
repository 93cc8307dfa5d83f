"""Exact resume after SIGKILL, checkpoint on SIGTERM, stop on NaN, config errors."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from mha_jax.train import ConfigError, checkpoint, train_and_evaluate

RESUME = {"total_steps": 12, "checkpoint_every": 3, "log_every": 1, "eval_every": 0,
          "model.dropout": 0.1}   # dropout on: the restored RNG must matter


@pytest.mark.slow
def test_resume_after_sigkill_is_exact(tmp_path, helpers):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  train_and_evaluate(helpers.smoke_config("gpt2_wikitext103", **RESUME), str(straight))

  child = pathlib.Path(__file__).with_name("kill_child.py")
  result = subprocess.run(
      [sys.executable, str(child), "gpt2_wikitext103", str(killed), "8", json.dumps(RESUME)],
      capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  assert helpers.checkpoint_steps(killed) == [3, 6]   # killed while drawing batch 8

  # Killed after logging step 7, resumed from 6: step 7 is trained and logged again.
  assert [row["step"] for row in helpers.read_metrics(killed, "train")] == list(range(1, 8))
  train_and_evaluate(helpers.smoke_config("gpt2_wikitext103", **RESUME), str(killed))
  assert helpers.checkpoint_steps(killed)[-1] == 12
  # Issue 9: metrics.jsonl stays one row per step after a resume.
  assert [row["step"] for row in helpers.read_metrics(killed, "train")] == list(range(1, 13))
  expected = jax.tree.leaves(checkpoint.load_params(str(straight)))
  resumed = jax.tree.leaves(checkpoint.load_params(str(killed)))
  for a, b in zip(expected, resumed, strict=True):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_returns(tmp_path, helpers, hook_train_batches):
  def send_sigterm(n, batch):
    if n == 7:
      os.kill(os.getpid(), signal.SIGTERM)
    return batch

  hook_train_batches(send_sigterm)
  train_and_evaluate(helpers.smoke_config("gpt2_wikitext103"), str(tmp_path))
  assert helpers.checkpoint_steps(tmp_path) == [7]
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL   # handler restored


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_saves_nothing_after(tmp_path, helpers,
                                                              hook_train_batches):
  def poison(n, batch):
    if n >= 7:
      batch = dict(batch, image=np.full_like(batch["image"], np.nan))
    return batch

  hook_train_batches(poison)
  config = helpers.smoke_config("vit_cifar", checkpoint_every=5)
  with pytest.raises(FloatingPointError, match="step 7: non-finite loss and grad_norm and "
                                                "param_norm .*the last good checkpoint is step 5"):
    train_and_evaluate(config, str(tmp_path))
  assert helpers.checkpoint_steps(tmp_path) == [5]


@pytest.mark.slow
def test_divergence_with_finite_loss_is_never_checkpointed(tmp_path, helpers):
  # Issue 9 case 1: at lr 1e3 step 5 logged a finite loss with NaN gradient and
  # params, and checkpoint 5 was saved with every parameter NaN.
  config = helpers.smoke_config("gpt2_wikitext103", checkpoint_every=5, log_every=5)
  config.optim.learning_rate = 1e3
  with pytest.raises(FloatingPointError, match=r"step (\d+): non-finite .*grad_norm") as error:
    train_and_evaluate(config, str(tmp_path))
  bad_step = int(error.value.args[0].split(":")[0].split()[1])
  saved = helpers.checkpoint_steps(tmp_path)
  assert all(step < bad_step for step in saved)
  assert error.value.args[0].endswith(f"the last good checkpoint is step {saved[-1]} (intact)"
                                      if saved else "no checkpoint was saved")
  if saved:
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(checkpoint.load_params(str(tmp_path))))


@pytest.mark.slow
def test_nonfinite_batches_can_be_skipped_and_counted(tmp_path, helpers, hook_train_batches):
  def poison(n, batch):
    return dict(batch, image=np.full_like(batch["image"], np.nan)) if n in (3, 4) else batch

  hook_train_batches(poison)
  config = helpers.smoke_config("vit_cifar", max_skipped_steps=2, eval_every=0, log_every=1,
                                total_steps=6, checkpoint_every=0)
  train_and_evaluate(config, str(tmp_path))
  rows = helpers.read_metrics(tmp_path, "train")
  assert [row["step"] for row in rows] == [1, 2, 5, 6]
  assert [row["skipped_steps"] for row in rows] == [0, 0, 2, 2]
  params = checkpoint.load_params(str(tmp_path))
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 12}, "not divisible by data\\*fsdp=8"),
    ({"mesh.data": 16}, "needs 16 devices, 8 available"),
    ({"data.name": "no_such_dataset"}, "unknown dataset 'no_such_dataset'"),
    ({"model.num_heads": 5}, "num_heads=5 does not divide width=32"),
])
def test_bad_config_fails_before_compute_in_one_line(tmp_path, helpers, overrides, message):
  config = helpers.smoke_config("gpt2_wikitext103", **overrides)
  with pytest.raises(ConfigError, match=message) as error:
    train_and_evaluate(config, str(tmp_path / "run"))
  assert "\n" not in str(error.value)
  assert not (tmp_path / "run" / "checkpoints").exists()
