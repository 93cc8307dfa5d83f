"""A vmapped group of K runs and the K runs trained one by one with the train
package's own step: equal to float32 rounding over the first steps (loss and params
≤ 1e-5 after 3 steps, default optimizer), and that rounding depends on the group
size alone — a run is bitwise the same beside any mates at a fixed K. It is not the
same across K, and over a full schedule Adam and the training's chaos amplify it
to a change of outcome (experiments/group_rounding.py measures how much, into
sweeps/group_rounding/rounding.json); hence one stored result per sweep cell."""

import functools
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax.sweep import vmapped
from mha_jax.train import config_util, optim, state as state_lib, steps, tasks
from mha_jax.train import train as train_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def tiny_config(**attention):
  config = config_util.load_config(f"{ROOT}/configs/demo.py:smoke,attention=hopfield")
  config = config_util.shrink_to_smoke(config)
  config.model.update(num_layers=2, width=16, num_heads=2, mlp_dim=16)
  config.model.attention.update(attention)
  config.batch_size = 8
  config.total_steps = 3
  return config


# The key bias has an exactly zero gradient (softmax ignores a per-query shift), so
# its "gradient" is rounding noise that Adam's g/√v turns into steps of up to ±lr:
# across a vmapped and a lone run those leaves differ by up to lr per step, the
# first place rounding shows.
def params_tolerance(path, lr, steps):
  return lr * steps if "key" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(
      path) else 1e-5


def separate_run(config, num_steps):
  """The train package's step on one model configured with this run's values."""
  train_input = train_lib.make_input(config, train=True)
  task = tasks.make_task(config, train_input.info)
  model = train_lib.make_model(config.model, task)
  tx, _ = optim.make_optimizer(config.optim, config.total_steps)
  state = nn.unbox(state_lib.init_fn(model, tx, task, config.seed)(jax.random.key(config.seed)))
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx, task=task))
  losses = []
  for _ in range(num_steps):
    state, metrics = step(state, jax.tree.map(jnp.asarray, next(train_input)))
    losses.append(float(metrics["loss"]))
  return np.array(losses), state["params"]


@pytest.mark.parametrize("settings", [
    [vmapped.RunSetting(0, 0.5, 0.2), vmapped.RunSetting(1, 0.7, 0.7)],
    [vmapped.RunSetting(3), vmapped.RunSetting(4)],
], ids=["alpha_grid", "seeds"])
def test_vmapped_group_equals_separate_runs(settings):
  config = tiny_config(kind="hopfield", alpha=0.5, alpha_hidden=0.5)
  group = vmapped.VmappedGroup(config, settings)
  losses_SxK = group.train(3)
  for k, setting in enumerate(settings):
    expected_losses, expected_params = separate_run(vmapped.run_config(config, setting), 3)
    np.testing.assert_allclose(losses_SxK[:, k], expected_losses, atol=1e-5)
    got = jax.tree.map(lambda a, k=k: a[k], group.states["params"])
    lr = float(config.optim.learning_rate)
    jax.tree_util.tree_map_with_path(
        lambda path, a, b: np.testing.assert_allclose(
            a, b, atol=params_tolerance(path, lr, 3), err_msg=jax.tree_util.keystr(path)),
        got, expected_params)
  # the runs really differ (different data order / α): equality is not vacuous
  assert np.abs(losses_SxK[:, 0] - losses_SxK[:, 1]).max() > 1e-4


def test_a_run_is_bitwise_the_same_beside_any_mates_at_a_fixed_group_size():
  """X = (seed 1, α 0.5, α′ 0.5) trained 5 steps in [X, A] and in [B, X]: equal bits
  (the rounding depends on K, not on the mates' values or X's position)."""
  config = tiny_config(kind="hopfield", alpha=0.5, alpha_hidden=0.5)
  x = vmapped.RunSetting(1, 0.5, 0.5)
  first = vmapped.VmappedGroup(config, [x, vmapped.RunSetting(0, 0.7, 0.2)])
  second = vmapped.VmappedGroup(config, [vmapped.RunSetting(4, 0.2, 1.0), x])
  losses_a, losses_b = first.train(5), second.train(5)
  np.testing.assert_array_equal(losses_a[:, 0], losses_b[:, 1])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[0], b[1]),
               first.states["params"], second.states["params"])
  assert np.abs(losses_a[:, 1] - losses_b[:, 0]).max() > 1e-4   # the mates differ


def test_alpha_settings_need_hopfield():
  with pytest.raises(ValueError, match="kind='hopfield'"):
    vmapped.VmappedGroup(tiny_config(kind="standard"), [vmapped.RunSetting(0, 0.5, 0.5)])


def test_depth_profile_matches_each_run_measured_alone():
  """Trained-network depth curves: each run's residual stream, measured in NumPy."""
  config = tiny_config(kind="hopfield", alpha=0.5, alpha_hidden=0.5)
  settings = [vmapped.RunSetting(0, 0.5, 0.2), vmapped.RunSetting(1, 0.7, 0.7)]
  group = vmapped.VmappedGroup(config, settings)
  group.train(2)
  profile = group.depth_profile()
  batch = next(iter(train_lib.make_input(config, train=False)))
  real_B = batch["mask"] > 0
  for k, setting in enumerate(settings):
    run = vmapped.run_config(config, setting)
    task = tasks.make_task(run, group.info)
    model = train_lib.make_model(run.model, task)
    params = jax.tree.map(lambda a, k=k: a[k], group.states["params"])
    _, inter = model.apply({"params": params}, jnp.asarray(batch["image"]), train=False,
                           return_intermediates=True)
    for layer, x_BxTxD in enumerate(np.asarray(inter["residual"], np.float64)):
      x_BxTxD = x_BxTxD[real_B]
      unit = x_BxTxD / np.linalg.norm(x_BxTxD, axis=-1, keepdims=True)
      cos_BxTxT = unit @ unit.transpose(0, 2, 1)
      i, j = np.triu_indices(x_BxTxD.shape[1], 1)
      np.testing.assert_allclose(profile["cosine"][k][layer], cos_BxTxT[:, i, j].mean(),
                                 rtol=1e-4)
      centred = x_BxTxD - x_BxTxD.mean(1, keepdims=True)
      norm = lambda m: np.sqrt(np.abs(m).sum(-2).max(-1) * np.abs(m).sum(-1).max(-1))  # noqa: E731
      np.testing.assert_allclose(profile["rank_residual"][k][layer],
                                 (norm(centred) / norm(x_BxTxD)).mean(), rtol=1e-4)
  assert len(profile["centred_cosine"][0]) == config.model.num_layers
