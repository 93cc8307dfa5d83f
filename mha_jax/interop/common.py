"""Shared pieces of the converters: a state-dict reader that remembers where every
parameter came from (so a bad checkpoint is reported by its own key names), and the
layout helpers between PyTorch `Linear` weights and this codebase's kernels.

Parameter paths are "/"-joined strings in the loop layout ("decoder/layers_0/..."),
the one layout a per-layer checkpoint maps onto one to one.
"""

from __future__ import annotations

import re

import jax
import numpy as np


class CheckpointError(ValueError):
  """A checkpoint that does not fit the model; the message is one line."""


class StateDictReader:
  """Takes named tensors out of a flat state dict into parameter paths.

  Every key must be used or match one of `ignore` (buffers such as GPT-2's causal
  mask): an unused key means the checkpoint has something the model lacks (layer
  scale, extra layers), which must not pass silently.
  """

  def __init__(self, state_dict, source, ignore=()):
    self.state_dict = state_dict
    self.source = source
    self.ignore = [re.compile(p) for p in ignore]
    self.used = set()
    self.params = {}   # path → array
    self.origin = {}   # path → checkpoint key

  def take(self, key, paths):
    if key not in self.state_dict:
      raise CheckpointError(f"{self.source}: missing key {key!r} (for {', '.join(paths)})")
    self.used.add(key)
    return np.asarray(self.state_dict[key])

  def put(self, path, key, transform=lambda a: a):
    """params[path] = transform(state_dict[key])."""
    self.put_many([path], key, lambda a: [transform(a)])

  def put_layer_norm(self, path, key_prefix):
    """A LayerNorm: path/scale ← key_prefix.weight, path/bias ← key_prefix.bias."""
    self.put(f"{path}/scale", f"{key_prefix}.weight")
    self.put(f"{path}/bias", f"{key_prefix}.bias")

  def put_many(self, paths, key, split):
    """One fused tensor (GPT-2 c_attn, timm qkv) → several parameters."""
    array = self.take(key, paths)
    try:
      parts = split(array)
    except ValueError as e:  # a reshape that the checkpoint's own shapes do not allow
      raise CheckpointError(f"{self.source}: key {key!r} of shape {array.shape} does not "
                            f"split into {', '.join(paths)}: {e}") from None
    for path, part in zip(paths, parts):
      self.params[path] = part
      self.origin[path] = key

  def finish(self):
    """(params, origin) once every key is accounted for."""
    for key in sorted(self.state_dict):
      if key not in self.used and not any(p.search(key) for p in self.ignore):
        raise CheckpointError(f"{self.source}: unexpected key {key!r} of shape "
                              f"{tuple(np.shape(self.state_dict[key]))}: the model has no "
                              f"parameter for it")
    return self.params, self.origin


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


def linear_to_kernel(w_OxI):
  """torch.nn.Linear weight [out, in] → Flax Dense kernel [in, out]."""
  return np.ascontiguousarray(w_OxI.T)


def split_heads_in(kernel_DxHD, num_heads):
  """Dense kernel [D, heads·head_dim] → q/k/v `Projection` kernel [D, heads, head_dim]."""
  return kernel_DxHD.reshape(kernel_DxHD.shape[0], num_heads, -1)


def split_heads_out(kernel_HDxD, num_heads):
  """Dense kernel [heads·head_dim, D] → `out` `Projection` kernel [heads, head_dim, D]."""
  return kernel_HDxD.reshape(num_heads, -1, kernel_HDxD.shape[-1])


def merge_in(kernel_DxHxK):
  """Inverse of split_heads_in."""
  return kernel_DxHxK.reshape(kernel_DxHxK.shape[0], -1)


def merge_out(kernel_HxKxD):
  """Inverse of split_heads_out."""
  return kernel_HxKxD.reshape(-1, kernel_HxKxD.shape[-1])


def _leaves(tree, prefix=()):
  """(path tuple, leaf) pairs of a nested dict."""
  if not isinstance(tree, dict):
    yield prefix, tree
    return
  for key, value in tree.items():
    yield from _leaves(value, prefix + (key,))


def flat_shapes(params_tree):
  """Param structs, scanned or not → {loop-layout path: ShapeDtypeStruct}."""
  out = {}
  for path, leaf in _leaves(params_tree):
    if "layers" not in path:
      out["/".join(path)] = leaf
      continue
    at = path.index("layers")  # scanned: leaves carry a leading layer axis
    for i in range(leaf.shape[0]):
      layer_path = path[:at] + (f"layers_{i}",) + path[at + 1:]
      out["/".join(layer_path)] = jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
  return out


def flatten(params_tree):
  """Nested loop-layout params → {path: array}."""
  return {"/".join(path): np.asarray(leaf) for path, leaf in _leaves(params_tree)}


def unflatten(flat):
  tree = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for key in parents:
      node = node.setdefault(key, {})
    node[leaf] = value
  return tree
