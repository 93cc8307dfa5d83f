"""Two-way name tables between PyTorch state dicts and mha_jax parameters.

A family's table is a tuple of `Row(ours, theirs, transform)`: our "/"-joined
parameter path in the loop layout ("decoder/layers_{i}/mlp/fc1/kernel"), their
state-dict key ("transformer.h.{i}.mlp.c_fc.weight"), and an invertible transform
between the two orientations. `{i}` rows repeat per layer. One `Table` reads the
rows both ways (the shape of MaxText's checkpoint_conversion param mappings), so
an import and its export cannot drift apart; a row whose `ours` names several
paths is one fused tensor (GPT-2 `c_attn`, timm `qkv`) split along `fused_axis`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import jax
import numpy as np
from flax import traverse_util

from mha_jax.models import param_layout

# HF activation names → mha_jax MLPs (GPT-2 `activation_function`, ViT `hidden_act`).
GELU = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}


class CheckpointError(ValueError):
  """A checkpoint that does not fit the model; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Transform:
  """One tensor's orientation change; both maps take (array, num_heads)."""
  to_ours: Callable
  to_theirs: Callable

  def then(self, other):
    """This transform, then `other` (on import; the reverse order on export)."""
    return Transform(lambda a, h: other.to_ours(self.to_ours(a, h), h),
                     lambda a, h: self.to_theirs(other.to_theirs(a, h), h))


SAME = Transform(lambda a, h: a, lambda a, h: a)
# torch Linear weight [out, in] ↔ Flax kernel [in, out].
LINEAR = Transform(lambda w, h: w.T, lambda k, h: k.T)
# Dense kernel [D, heads·head_dim] ↔ q/k/v `Projection` kernel [D, heads, head_dim].
HEADS_IN = Transform(lambda k, h: k.reshape(k.shape[0], h, -1),
                     lambda k, h: k.reshape(k.shape[0], -1))
# Dense kernel [heads·head_dim, D] ↔ `out` `Projection` kernel [heads, head_dim, D].
HEADS_OUT = Transform(lambda k, h: k.reshape(h, -1, k.shape[-1]),
                      lambda k, h: k.reshape(-1, k.shape[-1]))
HEADS_BIAS = Transform(lambda b, h: b.reshape(h, -1), lambda b, h: b.reshape(-1))
# torch Conv2d weight [out, in, kh, kw] ↔ Flax Conv kernel [kh, kw, in, out].
CONV = Transform(lambda w, h: w.transpose(2, 3, 1, 0), lambda k, h: k.transpose(3, 2, 0, 1))
LINEAR_HEADS_IN = LINEAR.then(HEADS_IN)
LINEAR_HEADS_OUT = LINEAR.then(HEADS_OUT)


@dataclasses.dataclass(frozen=True)
class Row:
  ours: tuple[str, ...] | str   # several paths: parts of one fused tensor
  theirs: str
  transform: Transform = SAME
  fused_axis: int = 0

  def paths(self):
    return (self.ours,) if isinstance(self.ours, str) else tuple(self.ours)

  def at_layer(self, i):
    return Row(tuple(p.format(i=i) for p in self.paths()), self.theirs.format(i=i),
               self.transform, self.fused_axis)


def dense(ours, theirs, kernel=SAME, bias=SAME, use_bias=True, fused_axis=0):
  """kernel (and bias) rows of one projection; `ours` a tuple for a fused one."""
  paths = (ours,) if isinstance(ours, str) else ours
  rows = [Row(tuple(f"{p}/kernel" for p in paths), f"{theirs}.weight", kernel, fused_axis)]
  if use_bias:
    rows.append(Row(tuple(f"{p}/bias" for p in paths), f"{theirs}.bias", bias))
  return rows


def norm(ours, theirs, use_bias=True):
  """A LayerNorm (scale ← weight, bias ← bias) or RMSNorm (no bias)."""
  rows = [Row(f"{ours}/scale", f"{theirs}.weight")]
  return rows + [Row(f"{ours}/bias", f"{theirs}.bias")] if use_bias else rows


def linear_block(ours, theirs, names, use_bias=True):
  """Rows of a pre-norm block made of torch Linear layers with separate Q, K, V (HF
  ViT, HF LLaMA, the PyTorch reference); names: our module → their module."""
  rows = []
  for module, name in names.items():
    path, key = f"{ours}{module}", f"{theirs}{name}"
    if module.endswith("_norm"):
      rows += norm(path, key, use_bias)
    elif module in ("query", "key", "value"):
      rows += dense(f"{ours}attention/{module}", key, LINEAR_HEADS_IN, HEADS_BIAS, use_bias)
    elif module == "out":
      rows += dense(f"{ours}attention/out", key, LINEAR_HEADS_OUT, use_bias=use_bias)
    else:
      rows += dense(f"{ours}mlp/{module}", key, LINEAR, use_bias=use_bias)
  return rows


@dataclasses.dataclass(frozen=True)
class Table:
  """A family's rows, read both ways. `ignore`: their keys with no parameter (buffers,
  a tied head); `prepare`: renames older or in-memory spellings before import."""
  rows: tuple[Row, ...]
  ignore: tuple[str, ...] = ()
  prepare: Callable = lambda state_dict: state_dict

  def expand(self, num_layers):
    for row in self.rows:
      if "{i}" in row.theirs:
        yield from (row.at_layer(i) for i in range(num_layers))
      else:
        yield row

  def import_state_dict(self, state_dict, num_layers, num_heads, source):
    """Their state dict → ({loop-layout path: array}, {path: their key}). Every key must
    be used or ignored: an unused one means the checkpoint has something the model
    lacks (layer scale, extra layers), which must not pass silently."""
    state_dict = self.prepare(state_dict)
    params, origin = {}, {}
    for row in self.expand(num_layers):
      paths = row.paths()
      if row.theirs not in state_dict:
        raise CheckpointError(f"{source}: missing key {row.theirs!r} (for {', '.join(paths)})")
      array = np.asarray(state_dict[row.theirs])
      try:
        parts = np.split(array, len(paths), axis=row.fused_axis) if len(paths) > 1 else [array]
        parts = [row.transform.to_ours(part, num_heads) for part in parts]
      except ValueError as e:  # a reshape that the checkpoint's own shapes do not allow
        raise CheckpointError(f"{source}: key {row.theirs!r} of shape {array.shape} does not "
                              f"split into {', '.join(paths)}: {e}") from None
      for path, part in zip(paths, parts):
        params[path], origin[path] = np.ascontiguousarray(part), row.theirs
    ignore = [re.compile(p) for p in self.ignore]
    for key in sorted(set(state_dict) - set(origin.values())):
      if not any(p.search(key) for p in ignore):
        raise CheckpointError(f"{source}: unexpected key {key!r} of shape "
                              f"{tuple(np.shape(state_dict[key]))}: the model has no "
                              f"parameter for it")
    return params, origin

  def export_state_dict(self, flat, num_layers, num_heads):
    """{loop-layout path: array} → their state dict."""
    state_dict = {}
    for row in self.expand(num_layers):
      parts = [row.transform.to_theirs(flat[path], num_heads) for path in row.paths()]
      whole = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=row.fused_axis)
      state_dict[row.theirs] = np.ascontiguousarray(whole)
    return state_dict


def check_against(params, origin, expected, source):
  """Every model parameter present with its shape; cast to the model's dtype."""
  for path, struct in expected.items():
    if path not in params:
      raise CheckpointError(f"{source}: no checkpoint tensor for model parameter {path} "
                            f"of shape {tuple(struct.shape)}")
    got = tuple(params[path].shape)
    if got != tuple(struct.shape):
      raise CheckpointError(f"{source}: key {origin[path]!r} gives {path} shape {got}, "
                            f"the model expects {tuple(struct.shape)}")
  for path in params:
    if path not in expected:
      raise CheckpointError(f"{source}: key {origin[path]!r} maps to {path}, which the "
                            f"model does not have (check num_layers / pool)")
  return {path: np.asarray(params[path], dtype=expected[path].dtype) for path in expected}


def flatten(params_tree):
  """Params in either layout → {loop-layout path: array}."""
  flat = traverse_util.flatten_dict(param_layout.unstack_layer_params(params_tree), sep="/")
  return {path: np.asarray(leaf) for path, leaf in flat.items()}


def flat_shapes(param_structs):
  """Param ShapeDtypeStructs, scanned or not → {loop-layout path: ShapeDtypeStruct}."""
  unstacked = jax.eval_shape(param_layout.unstack_layer_params, param_structs)
  return traverse_util.flatten_dict(unstacked, sep="/")


def unflatten(flat):
  return traverse_util.unflatten_dict(flat, sep="/")


@dataclasses.dataclass(frozen=True)
class ConfigField:
  """One config.json field: its HF name, the mha_jax option it is (a StackConfig field
  or the model's own, e.g. vocab_size), and the default HF assumes when it is absent
  (REQUIRED: the config must have it)."""
  theirs: str
  ours: str
  default: object = None


REQUIRED = object()


def import_config_fields(fields, config):
  """mha_jax options from an HF config.json, by the family's field table."""
  options = {}
  for field in fields:
    if field.theirs not in config and field.default is REQUIRED:
      raise CheckpointError(f"config.json has no {field.theirs!r}")
    options[field.ours] = config.get(field.theirs, None if field.default is REQUIRED
                                     else field.default)
  return options


def export_config_fields(fields, model):
  """config.json fields of `model` by the same table (the stack first, then the model)."""
  def value(name):
    return getattr(model.stack if hasattr(model.stack, name) else model, name)
  return {field.theirs: value(field.ours) for field in fields}
