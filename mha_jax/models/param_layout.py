"""Two layouts of a stack's parameters, and the maps between them.

Scanned (`nn.scan`): {"layers": leaves with a leading [L] axis}. Loop
(`scan_layers=False`, and every PyTorch checkpoint): {"layers_0": ..., "layers_{L-1}": ...}.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp

_LAYER_KEY = re.compile(r"^layers_(\d+)$")


def unstack_layer_params(params):
  """Scanned layout {"layers": leaves [L, ...]} → loop layout {"layers_i": ...}, at any depth."""
  if not isinstance(params, dict):
    return params
  out = {}
  for key, value in params.items():
    if key == "layers":
      num_layers = jax.tree.leaves(value)[0].shape[0]
      for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], value)
    else:
      out[key] = unstack_layer_params(value)
  return out


def stack_layer_params(params):
  """Loop layout {"layers_i": ...} → scanned layout {"layers": leaves [L, ...]}, at any depth."""
  if not isinstance(params, dict):
    return params
  layer_keys = sorted((k for k in params if _LAYER_KEY.match(k)),
                      key=lambda k: int(_LAYER_KEY.match(k).group(1)))
  out = {k: stack_layer_params(v) for k, v in params.items() if k not in layer_keys}
  if layer_keys:
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *(params[k] for k in layer_keys))
  return out
