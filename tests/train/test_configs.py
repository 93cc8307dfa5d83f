"""Configs load and build their models; arguments, optimizer masks, meshes and
init_from merging behave. No training here: all fast."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mha_jax.models import stack_config
from mha_jax.train import ConfigError, checkpoint, config_util, optim, sharding, train

PAPER_ROWS = [
    "gpt2_wikitext103.py:size=small,attention=hopfield",
    "gpt2_wikitext103.py:size=medium",
    "llama_lm.py:dataset=wikitext103,attention=hopfield",
    "llama_lm.py:dataset=cnn_dailymail",
    "llama_lm.py:dataset=bookcorpus",
    "vit_cifar.py:size=Ti,dataset=cifar10",
    "vit_cifar.py:size=L,dataset=cifar100,attention=hopfield,alpha=0.7",
    "vit_imagenet.py:attention=hopfield,alpha=0.7",
    "transfer.py:dataset=cars196",
    "ablation_alpha.py:alpha=0.5,alpha_hidden=0.2",
    "noskip_depth.py:depth=8,dataset=cifar100,attention=hopfield",
    "demo.py:attention=hopfield",
]
TEXT_INFO = types.SimpleNamespace(kind="text", vocab_size=50257, seq_len=1024)


@pytest.mark.parametrize("spec", PAPER_ROWS + [f"{n}.py:smoke" for n in (
    "vit_cifar", "vit_imagenet", "transfer", "gpt2_wikitext103", "llama_lm", "demo")])
def test_config_loads_and_builds_its_model(spec, helpers):
  config = config_util.load_config(f"{helpers.configs}/{spec}")
  info = TEXT_INFO
  if config.model.name == "vit":
    size = config.data.image_size
    info = types.SimpleNamespace(kind="image", num_classes=10, image_shape=(size, size, 3))
  model = train.build_model(config.model, info)
  train.validate(config)
  assert model.stack.skip_connections == ("noskip" not in spec)
  assert config.total_steps >= 1 and config.data.name


def test_parse_arg_types_and_unknown_keys():
  args = config_util.parse_arg("size=S,alpha=0.7,depth=4,smoke", size="Ti", alpha=0.5,
                               depth=0, smoke=False)
  assert (args.size, args.alpha, args.depth, args.smoke) == ("S", 0.7, 4, True)
  with pytest.raises(ValueError, match="unknown config arg 'alhpa'"):
    config_util.parse_arg("alhpa=1", alpha=0.5)


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


@pytest.mark.parametrize("mesh, shape", [
    (dict(data=-1), (8, 1, 1)), (dict(data=2, fsdp=-1), (2, 4, 1)),
    (dict(data=-1, tensor=2), (4, 1, 2))])
def test_mesh_fills_minus_one(mesh, shape):
  assert sharding.mesh_shape(mesh, 8) == shape


@pytest.mark.parametrize("mesh, message", [
    (dict(data=3), "needs 3 devices, 8 available"), (dict(data=-1, fsdp=-1), "at most one"),
    (dict(data=-1, tensor=3), "cannot fill 8 devices"), (dict(pipeline=2), "unknown axes")])
def test_bad_mesh_is_a_config_error(mesh, message):
  with pytest.raises(ConfigError, match=message):
    sharding.mesh_shape(mesh, 8)


def test_init_from_merge_keeps_new_head():
  fresh = {"body": {"kernel": jnp.zeros((2, 2))}, "head": {"kernel": jnp.zeros((2, 5))}}
  loaded = {"body": {"kernel": np.ones((2, 2))}, "head": {"kernel": np.ones((2, 3))}}
  merged, kept = checkpoint.merge_params(fresh, loaded)
  assert np.all(merged["body"]["kernel"] == 1) and np.all(merged["head"]["kernel"] == 0)
  assert kept == ["['head']['kernel']"]


def test_every_attention_field_is_overridable_from_the_command_line():
  config = config_util.load_config("configs/demo.py:attention=hopfield,alpha=0.7")
  assert set(config.model.attention) == {f.name for f in dataclasses.fields(stack_config.AttentionConfig)}
  assert config.model.attention.alpha_hidden == 0.7   # tied to α as in the paper
  config.model.attention.h0 = "first_scores"           # what --config.model.attention.h0 does
  assert stack_config.AttentionConfig(**config.model.attention).h0 == "first_scores"
