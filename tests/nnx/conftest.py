"""Tiny models of each family, their inputs, and Linen parameters to load into the
NNX modules, for the tests of mha_jax.nnx (as a fixture: conftest is not importable
under --import-mode=importlib)."""

import types

import flax.linen as nn
import jax
import pytest

from mha_jax import models

TINY_STACK = dict(num_layers=2, width=32, num_heads=2, mlp_dim=64)
TINY = {"gpt2": ("small", dict(TINY_STACK, vocab_size=61, max_len=16)),
        "llama": ("60m", dict(TINY_STACK, vocab_size=61, max_len=16)),
        "vit": ("Ti/4", dict(TINY_STACK, image_size=8, num_classes=5))}


def options(name, **overrides):
  """(variant, options) of the tiny `name` model, with overrides."""
  variant, tiny = TINY[name]
  return variant, {**tiny, **overrides}


def linen_model(name, **overrides):
  variant, opts = options(name, **overrides)
  return models.build_model(name, variant, **opts)


def model_input(name, seed=1, batch=2):
  """Tokens [batch, 8] or RGB images [batch, 8, 8, 3]."""
  key = jax.random.key(seed)
  if name == "vit":
    return jax.random.normal(key, (batch, 8, 8, 3))
  return jax.random.randint(key, (batch, 8), 0, TINY[name][1]["vocab_size"])


def linen_params(model, x, seed=3):
  """Random params with exactly the tree of the Linen model's init (shapes from
  `jax.eval_shape`, no init run): N(0, 0.1²), plus 1 on norm scales. Nothing sits at
  its init value (zero heads, zero ReZero gates and unit norms would hide a leaf
  loaded in the wrong place)."""
  shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(0), x)["params"])
  paths_and_shapes, treedef = jax.tree_util.tree_flatten_with_path(shapes)
  keys = jax.random.split(jax.random.key(seed), len(paths_and_shapes))
  leaves = [0.1 * jax.random.normal(key, s.shape, s.dtype) + (path[-1].key == "scale")
            for (path, s), key in zip(paths_and_shapes, keys)]
  return jax.tree.unflatten(treedef, leaves)


@pytest.fixture
def tiny():
  return types.SimpleNamespace(options=options, linen_model=linen_model,
                               model_input=model_input, linen_params=linen_params)
