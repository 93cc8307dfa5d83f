"""The optimizer: weight-decay mask, frozen parameters, learning-rate schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax import config_util

from mha_jax.train import optim


def test_weight_decay_only_on_named_leaves():
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
            "norm": {"scale": jnp.ones(2)}, "token_embedding": {"embedding": jnp.ones((3, 2))}}
  config = config_util.base_config().optim
  config.update(learning_rate=1.0, warmup_steps=0, weight_decay=0.5, grad_clip=0.0)
  tx, _ = optim.make_optimizer(config, 10)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  decayed = jax.tree.map(lambda u: bool(np.any(u != 0)), updates)
  assert decayed == {"dense": {"kernel": True, "bias": False}, "norm": {"scale": False},
                     "token_embedding": {"embedding": False}}


def test_frozen_params_get_no_update():
  params = {"body": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 2))}}
  config = config_util.base_config().optim
  config.update(learning_rate=0.1, warmup_steps=0, trainable="^head/")
  tx, _ = optim.make_optimizer(config, 10)
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  assert not np.any(updates["body"]["kernel"]) and np.all(updates["head"]["kernel"] != 0)


def test_schedule_warms_up_then_decays():
  config = config_util.base_config().optim
  config.update(learning_rate=1.0, warmup_steps=10, end_lr_ratio=0.1)
  schedule = optim.make_schedule(config, 100)
  assert float(schedule(0)) == 0.0 and float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(100)) == pytest.approx(0.1)
