"""Checkpoints: orbax CheckpointManager (args API) in `<workdir>/checkpoints`.

Each step directory holds the train state (params, optimizer, step, RNG), the
data-iterator state and the config. Orbax writes to a temporary directory and
renames it when complete, so a crash mid-save leaves the previous step usable.

Resume priority (as MaxText documents it): (1) the latest checkpoint of this
workdir; (2) `config.init_from`, params only (an orbax workdir, or a Hugging
Face directory, detected by its config.json); (3) fresh init.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

ITEMS = ("state", "data", "config")


def make_manager(workdir, config):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, create=True,
      enable_async_checkpointing=config.async_checkpoints)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=options, item_names=ITEMS)


def save(manager, step, state, data_state, config):
  manager.save(step, force=True, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=ocp.args.JsonSave(data_state),
      config=ocp.args.JsonSave(config.to_dict())))


def _abstract(state_shapes, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state_shapes, shardings)


def restore_latest(manager, state_shapes, shardings):
  """(state, data_state) from the latest step, born with `shardings`; None if empty."""
  step = manager.latest_step()
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(_abstract(state_shapes, shardings)),
      data=ocp.args.JsonRestore()))
  logging.info("resumed from step %d", step)
  return restored.state, restored.data


def _load_orbax_params(directory):
  """Params of the latest checkpoint of another workdir, as host numpy arrays."""
  with ocp.CheckpointManager(os.path.abspath(os.path.join(directory, "checkpoints")),
                             item_names=ITEMS) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"init_from={directory}: no checkpoint in {directory}/checkpoints")
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  return jax.tree.map(np.asarray, restored.state["params"])


def load_init_params(directory, model, exclude=""):
  """Unboxed params from an orbax workdir or a Hugging Face / PyTorch directory;
  `exclude` (regex on param paths, e.g. "^head/") leaves leaves out of the
  PyTorch import so they stay freshly initialised."""
  if os.path.exists(os.path.join(directory, "config.json")) and not os.path.isdir(
      os.path.join(directory, "checkpoints")):
    from mha_jax import interop  # torch is optional: import only when asked for
    return interop.load_pretrained(directory, model, exclude=exclude or None)
  return _load_orbax_params(directory)


def merge_params(fresh, loaded):
  """`loaded` where its path and shape match `fresh`, else the fresh leaf (e.g. a new
  classifier head for transfer); returns (params, names kept fresh)."""
  flat_loaded = {jax.tree_util.keystr(p): v
                 for p, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}
  kept = []

  def pick(path, leaf):
    other = flat_loaded.get(jax.tree_util.keystr(path))
    if other is None or other.shape != leaf.shape:
      kept.append(jax.tree_util.keystr(path))
      return leaf
    return jax.device_put(np.asarray(other, leaf.dtype), leaf.sharding)

  return jax.tree_util.tree_map_with_path(pick, fresh), kept
