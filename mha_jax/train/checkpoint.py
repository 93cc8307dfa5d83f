"""Checkpoints: orbax CheckpointManager (args API) in `<workdir>/checkpoints`.

Each step directory holds the train state (params, optimizer, step, RNG), each
process's data-iterator state (see data_checkpoint) and the config. Orbax writes to a temporary directory and
renames it when complete, so a crash mid-save leaves the previous step usable.
Every process takes part in saves and restores (orbax coordinates them); only
moving a bad step aside is done by process 0.

On restore the newest step is validated (its metadata, its parameter shapes
against the model, then a full read of every array); a step that cannot be read
is moved to `<workdir>/checkpoints_corrupt/` (never deleted) and the previous
one is tried.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp

from mha_jax.train import data_checkpoint
from mha_jax.train.optim import param_name
from mha_jax.train.validation import ConfigError

CORRUPT_DIR = "checkpoints_corrupt"


class CheckpointError(RuntimeError):
  """No usable checkpoint where one was expected; one line, no traceback."""


def _handlers():
  return dict(state=ocp.StandardCheckpointHandler(), data=data_checkpoint.handler(),
              config=ocp.JsonCheckpointHandler())


def make_manager(workdir, config):
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.keep_checkpoints, create=True,
      enable_async_checkpointing=config.async_checkpoints)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                               options=options, item_handlers=_handlers())


def save(manager, step, state, data_state, config):
  manager.save(step, force=True, args=ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=data_checkpoint.save_args(data_state),   # one file per process
      config=ocp.args.JsonSave(config.to_dict())))


def _abstract(state_shapes, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state_shapes, shardings)


def _flat_shapes(tree):
  return {jax.tree_util.keystr(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def shape_mismatches(expected, found):
  """Paths whose shape differs or that exist on one side only, as one string."""
  want, have = _flat_shapes(expected), _flat_shapes(found)
  diffs = [f"{p} {want.get(p, 'absent')} vs {have.get(p, 'absent')}"
           for p in sorted(want.keys() | have.keys()) if want.get(p) != have.get(p)]
  shown = "; ".join(diffs[:4]) + (f"; … {len(diffs) - 4} more" if len(diffs) > 4 else "")
  return shown, len(diffs)


def _first_line(error):
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _move_aside(manager, step):
  """checkpoints/<step> → checkpoints_corrupt/<step>[-k]; returns the new path."""
  source = os.path.join(str(manager.directory), str(step))
  root = os.path.join(os.path.dirname(str(manager.directory)), CORRUPT_DIR)
  target, k = os.path.join(root, str(step)), 1
  while os.path.exists(target):
    target, k = os.path.join(root, f"{step}-{k}"), k + 1
  if jax.process_index() == 0:
    os.makedirs(root, exist_ok=True)
    shutil.move(source, target)
  manager.reload()
  return target


@contextlib.contextmanager
def _orbax_warnings_off():
  """Orbax warns about each missing file of a broken step; our one line says it."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def _restore_step(manager, step, abstract):
  """(state, data_state) of one step. A ConfigError if its parameters do not fit the
  model (the step is fine, the config differs); any other failure means unreadable."""
  with _orbax_warnings_off():
    metadata = manager.item_metadata(step)
  if metadata is None or metadata.get("state") is None:
    raise FileNotFoundError("no readable state/_METADATA")
  saved_params = metadata["state"]["params"]
  shown, count = shape_mismatches(abstract["params"], saved_params)
  if count:
    raise ConfigError(f"checkpoint step {step} does not fit the model ({count} params differ: "
                      f"{shown}); use a new --workdir")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract)))
  return restored.state, data_checkpoint.restore(os.path.join(str(manager.directory), str(step)))


def restore_latest(manager, state_shapes, shardings, say=logging.warning):
  """(step, state, data_state) from the newest readable step, born with `shardings`;
  None if there are no checkpoints. Unreadable steps are moved aside with one `say`
  line each; if every step is unreadable, CheckpointError."""
  abstract = _abstract(state_shapes, shardings)
  moved = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      state, data_state = _restore_step(manager, step, abstract)
    except ConfigError:
      raise
    except Exception as e:  # noqa: BLE001 — orbax and tensorstore raise many types
      target = _move_aside(manager, step)
      say(f"checkpoint step {step} is unreadable ({_first_line(e)}); moved to {target}")
      moved.append(step)
      continue
    return step, state, data_state
  if moved:
    raise CheckpointError(
        f"no readable checkpoint in {manager.directory}: steps {moved} were moved to "
        f"{os.path.join(os.path.dirname(str(manager.directory)), CORRUPT_DIR)}; start a new "
        f"--workdir (or move a good step back)")
  return None


def load_params(workdir):
  """Params of the newest checkpoint of a workdir, as host numpy arrays."""
  with ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                             item_handlers=_handlers()) as manager:
    step = manager.latest_step()
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}")
    # Onto this process's first device: the checkpoint may come from another topology
    # (a multi-host job), which a restore without a target refuses.
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                          manager.item_metadata(step)["state"],
                          is_leaf=lambda m: hasattr(m, "shape"))
    restored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
  return jax.tree.map(np.asarray, restored.state["params"])


def load_init_params(directory, model, exclude=""):
  """Unboxed params from an orbax workdir or a Hugging Face / PyTorch directory;
  `exclude` (regex on param paths, e.g. "^head/") leaves those leaves out, so they
  stay freshly initialised."""
  if os.path.exists(os.path.join(directory, "config.json")) and not os.path.isdir(
      os.path.join(directory, "checkpoints")):
    from mha_jax import interop  # torch is optional: import only when asked for
    return interop.load_pretrained(directory, model, exclude=exclude or None)
  return load_params(directory)


def merge_params(fresh, loaded, exclude=""):
  """`loaded` into the structure of `fresh`; leaves whose path matches the regex
  `exclude` (e.g. "^head/", a new classifier) stay fresh. Any other path that is
  missing or has another shape is an error naming the paths. Returns (params,
  paths kept fresh)."""
  pattern = re.compile(exclude) if exclude else None

  def wanted(tree):
    return jax.tree_util.tree_map_with_path(
        lambda p, x: None if pattern and pattern.search(param_name(p)) else x, tree)

  shown, count = shape_mismatches(wanted(fresh), wanted(loaded))
  if count:
    raise ConfigError(f"{count} params do not match the model ({shown}); exclude a new head "
                      f"with --config.init_from_exclude=REGEX")
  flat_loaded = {jax.tree_util.keystr(p): v
                 for p, v in jax.tree_util.tree_flatten_with_path(loaded)[0]}
  kept = []

  def pick(path, leaf):
    if pattern and pattern.search(param_name(path)):
      kept.append(param_name(path))
      return leaf
    return jax.device_put(np.asarray(flat_loaded[jax.tree_util.keystr(path)], leaf.dtype),
                          leaf.sharding)

  return jax.tree_util.tree_map_with_path(pick, fresh), kept
