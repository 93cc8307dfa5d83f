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

RESUME = {"total_steps": 12, "checkpoint_every": 3, "log_every": 3, "eval_every": 0,
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

  train_and_evaluate(helpers.smoke_config("gpt2_wikitext103", **RESUME), str(killed))
  assert helpers.checkpoint_steps(killed)[-1] == 12
  expected = jax.tree.leaves(checkpoint._load_orbax_params(str(straight)))
  resumed = jax.tree.leaves(checkpoint._load_orbax_params(str(killed)))
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
  with pytest.raises(FloatingPointError, match="non-finite loss at step 7"):
    train_and_evaluate(config, str(tmp_path))
  assert helpers.checkpoint_steps(tmp_path) == [5]


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
