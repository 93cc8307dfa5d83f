"""Every model family (GPT-2, LLaMA, ViT; every attention kind) as a Flax NNX module.

    model = mha_jax.nnx.build_model("gpt2", "small", rngs=nnx.Rngs(0),
                                    attention={"kind": "hopfield"})
    logits, per_layer = model(tokens)            # as the Linen model's `apply` returns
    mha_jax.nnx.load_linen_params(model, params)  # a Linen `params` tree, in place

Built through `flax.nnx.bridge.ToNNX` around the Linen model of
`mha_jax.models.build_model`, not ported. The Linen modules are the one source
of truth for the math: the `nn.scan` carry of (x, H) from layer to layer, the
kernels each attention kind dispatches to, the init and the parameter names. A
native port would be a second copy of all of it, to keep equal by hand.

What the bridge does here (checked with flax 0.12.8, tests/nnx):
- `nn.scan`'d params arrive as one `nnx.Param` per leaf with the leading [L]
  axis, under the Linen names (`model.decoder["layers"]["mlp"]["fc1"]["kernel"]`),
  so a Linen `params` tree and an orbax workdir map onto the module leaf for leaf;
  loop-layout trees (`layers_0` …) are restacked on load, and back.
- Logical partitioning survives: each Param keeps its names, the scanned axis
  named "layers", as `out_sharding` metadata (read it with `nnx.get_partition_spec`).
  Flax's eager sharding would place each Param at creation and, without a
  mesh, refuses these names, so `build_model` creates the module with eager
  sharding off; shard the state afterwards, as the Linen train loop does.
- Dropout: each call draws one key from every stream of the module's `nnx.Rngs`
  and hands them to Linen's `apply`; a Linen stream that is missing (e.g.
  "dropout" when only a default seed was given) falls back to the "params"
  key, so `nnx.Rngs(0)` is enough and `nnx.Rngs(0, dropout=1)` separates them.
  `model(x, train=True, rngs=key)` uses that key for this call alone.

α and α′ as arrays (for `nnx.vmap` sweeps): `set_attention_overrides` puts them
in the module as `AttentionOverride` variables, which the bridge passes to the
Linen stack as its `layers.OVERRIDES` collection; vmap over them with
`nnx.StateAxes({AttentionOverride: 0, ...: None})`.

The price of the bridge: submodules are nested dicts of Params, not NNX modules,
and each call re-enters Linen's `apply` (trace it once, under `nnx.jit`). Cached
decoding (`decode=True`, a "cache" collection) is not wired here: use
`mha_jax.decode` on the Linen model, with `nnx.to_pure_dict(nnx.state(model, nnx.Param))`
as its params.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from flax.core import meta
from flax.nnx import traversals

from mha_jax import models
from mha_jax.models import layers, param_layout


class AttentionOverride(nnx.Variable):
  """α or α′ of an MHA stack as an array (scalar, or [K] under `nnx.vmap`)."""


nnx.register_variable_name(layers.OVERRIDES, AttentionOverride, overwrite=True)


def _sample_input(name, linen_model):
  """The smallest input that creates every parameter (shapes do not depend on T)."""
  if name == "vit":   # RGB, as the image datasets and the pretrained loaders have it
    size = linen_model.image_size
    return jnp.zeros((1, size, size, 3), jnp.float32)
  return jnp.zeros((1, 1), jnp.int32)


def build_model(name, variant=None, *, rngs, **overrides):
  """The NNX module of `mha_jax.models.build_model(name, variant, **overrides)`,
  its parameters drawn from `rngs` (an `nnx.Rngs`)."""
  if not isinstance(rngs, nnx.Rngs):
    raise ValueError(f"rngs={rngs!r} is not allowed; pass an nnx.Rngs, e.g. nnx.Rngs(0)")
  linen_model = models.build_model(name, variant, **overrides)
  module = nnx.bridge.ToNNX(linen_model, rngs=rngs)
  with nnx.use_eager_sharding(False):
    nnx.bridge.lazy_init(module, _sample_input(name, linen_model))
  return module


def _flat(tree):
  """{path tuple: leaf} of a nested mapping."""
  return traversals.flatten_mapping(tree) if tree else {}


def _describe(paths):
  shown = sorted("/".join(map(str, p)) for p in paths)
  return ", ".join(shown[:4]) + (f" … ({len(shown)} in all)" if len(shown) > 4 else "")


def _matching_layout(source, target_paths):
  """`source` ({path: array}) in the layer layout of the module: as it is, or
  restacked / unstacked (see `param_layout`)."""
  if set(source) == target_paths:
    return source
  tree = traversals.unflatten_mapping(source)
  for convert in (param_layout.stack_layer_params, param_layout.unstack_layer_params):
    converted = _flat(convert(tree))
    if set(converted) == target_paths:
      return converted
  missing, extra = target_paths - set(source), set(source) - target_paths
  raise ValueError(f"the params do not fit the module: missing {_describe(missing) or 'none'}; "
                   f"not in the module {_describe(extra) or 'none'}")


def load_linen_params(module, params):
  """Put a Linen `params` tree (boxed or not, scanned or loop layout, arrays of any
  kind) into `module`'s `nnx.Param`s in place; returns the module. Each value takes
  the dtype and the sharding of the Param it replaces."""
  params = meta.unbox(params)
  if set(params) == {"params"}:   # a whole variables dict
    params = params["params"]
  targets = dict(nnx.to_flat_state(nnx.state(module, nnx.Param)))
  source = _matching_layout(_flat(params), set(targets))
  wrong = [f"{'/'.join(path)} {np.shape(source[path])} vs {var.shape}"
           for path, var in sorted(targets.items()) if np.shape(source[path]) != var.shape]
  if wrong:
    raise ValueError(f"{len(wrong)} params have another shape than the module's "
                     f"(given vs module): {'; '.join(wrong[:4])}")
  for path, var in targets.items():
    var.set_value(_placed_like(source[path], var.get_value()))
  return module


def _placed_like(value, current):
  """`value` in `current`'s dtype and on its devices; a traced `current` (the module
  built inside `nnx.vmap` or `nnx.jit`) has no placement to keep."""
  value = jnp.asarray(value, current.dtype)
  return jax.device_put(value, current.sharding) if hasattr(current, "sharding") else value


def _stack_name(module):
  """The attribute holding the layer stack (its params hold "layers" or "layers_0")."""
  for name, value in vars(module).items():
    if isinstance(value, dict) and ("layers" in value or "layers_0" in value):
      return name
  raise ValueError(f"{type(module).__name__} has no layer stack; pass a module of build_model")


def set_attention_overrides(module, **values):
  """Give an MHA module α (`alpha`) and/or α′ (`alpha_hidden`) as arrays in place of
  its config's floats: scalars, or [K] to `nnx.vmap` over K settings. Returns the module."""
  for key in values.keys() - set(layers.OVERRIDABLE):
    raise ValueError(f"unknown attention override {key!r}; allowed: {layers.OVERRIDABLE}")
  kind = module.to_nnx__module.stack.attention.kind
  if kind != "hopfield":
    raise ValueError(f"attention overrides need attention.kind='hopfield'; this module's "
                     f"kind is {kind!r}, which reads no α / α′")
  arrays = {key: jnp.asarray(value, jnp.float32) for key, value in values.items()}
  for key, value in arrays.items():
    try:
      concrete = np.asarray(value)
    except jax.errors.TracerArrayConversionError:   # traced (a sweep under jit): unchecked
      continue
    if not np.all((concrete >= 0) & (concrete <= 1)):
      raise ValueError(f"{key}={concrete.tolist()} is outside [0, 1]")
  stack = _stack_name(module)
  setattr(module, stack, nnx.data({**getattr(module, stack),
                                   **{k: AttentionOverride(v) for k, v in arrays.items()}}))
  return module
