"""Checkpoints: a corrupt newest step falls back to the previous one (moved aside,
never deleted), a model that does not fit stops in one line, init_from merging is
strict unless a head is excluded."""

import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import config_util

from mha_jax.train import ConfigError, checkpoint, optim, sharding, state, tasks
from mha_jax.train import train

INFO = types.SimpleNamespace(modality="text", vocab_size=64, seq_len=8)
TASK = tasks.LanguageModelling(INFO)


def tiny_config(width=32):
  config = config_util.base_config()
  config.update(keep_checkpoints=5, async_checkpoints=False, mesh=dict(data=1))
  config.model = dict(name="gpt2", variant="small", num_layers=1, width=width, num_heads=2,
                      mlp_dim=32, attention=config_util.attention_config("hopfield", 0.5))
  return config


def setup(workdir, config):
  mesh = sharding.make_mesh(config.mesh, jax.devices()[:1])
  model = train.make_model(config.model, TASK)
  tx, _ = optim.make_optimizer(config.optim, 10)
  manager = checkpoint.make_manager(workdir, config)
  return manager, lambda: state.setup_state(config, model, tx, TASK, mesh,
                                            sharding.logical_rules(config), manager,
                                            say=messages.append)


messages = []


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
  """A workdir with steps 10 and 20 whose params differ (20 = 10 + 1)."""
  workdir = tmp_path_factory.mktemp("two_steps")
  config = tiny_config()
  manager, make = setup(workdir, config)
  fresh = make().state
  checkpoint.save(manager, 10, fresh, {"position": 10}, config)
  later = dict(fresh, params=jax.tree.map(lambda x: x + 1, fresh["params"]))
  checkpoint.save(manager, 20, later, {"position": 20}, config)
  manager.close()
  return workdir, jax.device_get(fresh["params"])


def truncate_arrays(step_dir):
  for path in (step_dir / "state" / "d").iterdir():
    with open(path, "r+b") as f:
      f.truncate(10)


CORRUPTIONS = {
    "truncated_array_file": truncate_arrays,
    "missing_METADATA": lambda step_dir: os.remove(step_dir / "state" / "_METADATA"),
    "empty_state": lambda step_dir: (shutil.rmtree(step_dir / "state"),
                                     os.mkdir(step_dir / "state")),
    "empty_step_dir": lambda step_dir: (shutil.rmtree(step_dir), os.mkdir(step_dir)),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_latest_step_falls_back_to_the_previous(corruption, two_steps, tmp_path):
  # Issue 9 case 3: each of these ended in a long orbax traceback, step 10 never tried.
  source, params_at_10 = two_steps
  workdir = tmp_path / "run"
  shutil.copytree(source, workdir)
  CORRUPTIONS[corruption](workdir / "checkpoints" / "20")
  messages.clear()
  manager, make = setup(workdir, tiny_config())
  restored = make()
  manager.close()
  assert restored.origin == "resumed from step 10" and restored.data_state == {"position": 10}
  for a, b in zip(jax.tree.leaves(jax.device_get(restored.state["params"])),
                  jax.tree.leaves(params_at_10), strict=True):
    np.testing.assert_array_equal(a, b)
  assert len(messages) == 1 and "\n" not in messages[0]
  assert messages[0].startswith("checkpoint step 20 is unreadable (")
  assert sorted(os.listdir(workdir / "checkpoints_corrupt")) == ["20"]   # moved, not deleted
  assert not (workdir / "checkpoints" / "20").exists()


def test_no_readable_step_stops_in_one_line(two_steps, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(two_steps[0], workdir)
  for step in ("10", "20"):
    os.remove(workdir / "checkpoints" / step / "state" / "_METADATA")
  manager, make = setup(workdir, tiny_config())
  with pytest.raises(checkpoint.CheckpointError, match=r"steps \[20, 10\] were moved") as error:
    make()
  manager.close()
  assert "\n" not in str(error.value)
  assert sorted(os.listdir(workdir / "checkpoints_corrupt")) == ["10", "20"]


def test_checkpoint_of_another_model_shape_is_a_config_error_not_corruption(two_steps,
                                                                             tmp_path):
  # Issue 9 case 2 (forced resume with another width): a ~450-line orbax traceback.
  workdir = tmp_path / "run"
  shutil.copytree(two_steps[0], workdir)
  manager, make = setup(workdir, tiny_config(width=48))
  with pytest.raises(ConfigError, match=r"checkpoint step 20 does not fit the model") as error:
    make()
  manager.close()
  assert "\n" not in str(error.value)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]   # nothing moved


def test_load_params_reads_the_newest_step(two_steps):
  loaded = checkpoint.load_params(str(two_steps[0]))
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(two_steps[1]), strict=True):
    np.testing.assert_array_equal(a, b + 1)


def test_init_from_merge_fails_on_a_mismatch_and_excludes_a_head():
  fresh = {"body": {"kernel": jnp.zeros((2, 2))}, "head": {"kernel": jnp.zeros((2, 5))}}
  loaded = {"body": {"kernel": np.ones((2, 2))}, "head": {"kernel": np.ones((2, 3))}}
  with pytest.raises(ConfigError, match=r"1 params do not match.*\['head'\]\['kernel'\] "
                                        r"\(2, 5\) vs \(2, 3\)") as error:
    checkpoint.merge_params(fresh, loaded)
  assert "\n" not in str(error.value)
  merged, kept = checkpoint.merge_params(fresh, loaded, exclude="^head/")
  assert np.all(merged["body"]["kernel"] == 1) and np.all(merged["head"]["kernel"] == 0)
  assert kept == ["head/kernel"]


def test_init_from_merge_names_missing_params():
  fresh = {"body": {"kernel": jnp.zeros((2, 2))}, "extra": {"bias": jnp.zeros(3)}}
  with pytest.raises(ConfigError, match=r"\['extra'\]\['bias'\] \(3,\) vs absent"):
    checkpoint.merge_params(fresh, {"body": {"kernel": np.ones((2, 2))}})
