"""Device mesh and logical-axis rules from `config.mesh` / `config.sharding_rules`.

The models only name their axes ("batch", "embed", "heads", ...); the rules here
map names to the mesh axes (data, fsdp, tensor). A parameter dimension that a
mesh axis does not divide stays replicated instead of failing to compile (e.g.
ViT-Ti's 3 heads on a 2-way tensor axis).
"""

from __future__ import annotations

import contextlib
import logging
import math

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from mha_jax.train.validation import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # the global batch is split over both

# Logical name → mesh axis (None: replicated). "batch" shards activations and data.
DEFAULT_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("classes", None),
    ("kv", None),
    ("length", None),
    ("layers", None),
)


def mesh_shape(mesh_config, num_devices):
  """Sizes for MESH_AXES with one -1 filled from the device count."""
  unknown = set(mesh_config) - set(MESH_AXES)
  if unknown:
    raise ConfigError(f"config.mesh has unknown axes {sorted(unknown)}; allowed: {MESH_AXES}")
  sizes = [int(mesh_config.get(axis, 1)) for axis in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ConfigError(f"config.mesh={dict(mesh_config)}: at most one axis may be -1")
  known = math.prod(s for s in sizes if s != -1)
  if known < 1 or any(s == 0 or s < -1 for s in sizes):
    raise ConfigError(f"config.mesh={dict(mesh_config)}: sizes must be positive or -1")
  if -1 in sizes:
    if num_devices % known:
      raise ConfigError(f"config.mesh={dict(mesh_config)} cannot fill {num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ConfigError(f"config.mesh={dict(mesh_config)} needs {math.prod(sizes)} devices, "
                      f"{num_devices} available")
  return tuple(sizes)


def make_mesh(mesh_config, devices=None):
  """Auto axis types: Linen logical constraints rely on GSPMD-style propagation."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_config, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES),
                       devices=devices)


def logical_rules(config):
  rules = config.get("sharding_rules")
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes)
               for name, axes in (rules or DEFAULT_RULES))


@contextlib.contextmanager
def step_context(mesh, rules):
  """Context in which the steps are traced: the mesh, and the rules that map the
  model's logical axis names (on params, activations and H) onto it."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def batch_sharding(mesh):
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh):
  return NamedSharding(mesh, P())


def _fit_spec(spec, shape, mesh, name):
  """Drop mesh axes that do not divide their dimension (replicate that dim)."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    size = math.prod(mesh.shape[a] for a in (axes if isinstance(axes, tuple) else (axes,))
                     if a is not None)
    if size > 1 and dim % size:
      logging.warning("%s: dim %d not divisible by mesh axes %s; replicated", name, dim, axes)
      axes = None
    fitted.append(axes)
  return P(*fitted)


def state_shardings(abstract_boxed_state, mesh, rules):
  """NamedShardings for a state whose params (and optimizer moments) carry
  `nn.LogicallyPartitioned` boxes; unboxed leaves (step, rng, counts) replicate."""
  specs = nn.get_partition_spec(abstract_boxed_state)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  shapes = nn.unbox(abstract_boxed_state)

  def to_sharding(path, spec, leaf):
    if not hasattr(leaf, "shape"):   # empty subtree: optax.MaskedNode of a frozen leaf
      return leaf
    return NamedSharding(mesh, _fit_spec(spec, leaf.shape, mesh, jax.tree_util.keystr(path)))

  return jax.tree_util.tree_map_with_path(
      to_sharding, mesh_specs, shapes,
      is_leaf=lambda x: isinstance(x, (P, optax.MaskedNode)))


def check_batch(global_batch_size, mesh, grad_accum_steps):
  """The batch must split evenly over the batch axes and the micro-batches."""
  shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
  if global_batch_size % (shards * grad_accum_steps):
    raise ConfigError(
        f"batch_size={global_batch_size} is not divisible by data*fsdp={shards} "
        f"x grad_accum_steps={grad_accum_steps}")
  if global_batch_size % jax.process_count():
    raise ConfigError(f"batch_size={global_batch_size} is not divisible by "
                      f"{jax.process_count()} processes")


def to_global(host_batch, sharding):
  """Host-local numpy batch → global jax.Arrays sharded over the batch axes."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), host_batch)
