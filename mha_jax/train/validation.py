"""What a config may be, and what a resumed run may change.

Every check here runs before any data is read or any array is made, and fails
with one `ConfigError` line that names the bad value and what is allowed.
"""

from __future__ import annotations

import json
import sys

import ml_collections


class ConfigError(ValueError):
  """A configuration that cannot run; raised before any compute."""


POSITIVE_FIELDS = ("total_steps", "batch_size", "eval_batch_size", "grad_accum_steps",
                   "log_every", "keep_checkpoints")
NON_NEGATIVE_FIELDS = ("eval_every", "checkpoint_every", "max_skipped_steps",
                       "optim.warmup_steps")

# Fields a resumed run may change: how long it runs, how often it reports and saves,
# and where it runs (orbax reshards on restore). Everything else (model, data,
# optimizer, seed, batch) is the run's identity.
RESUMABLE_FIELDS = ("total_steps", "log_every", "eval_every", "eval_steps", "eval_batch_size",
                    "checkpoint_every", "keep_checkpoints", "async_checkpoints",
                    "progress_bar", "force_resume", "distributed", "distributed_timeout_s",
                    "compilation_cache_dir", "profile_start_step", "profile_num_steps",
                    "mesh", "sharding_rules",
                    "init_from", "init_from_exclude", "data.eval_split")


def _get(config, dotted):
  node = config
  for key in dotted.split("."):
    node = node[key]
  return node


def validate(config):
  """Loop-level checks; model and data options are checked where they are built."""
  for key in POSITIVE_FIELDS + NON_NEGATIVE_FIELDS:
    value = _get(config, key)
    least = 1 if key in POSITIVE_FIELDS else 0
    if int(value) < least:
      raise ConfigError(f"config.{key}={value} must be >= {least}")
  check_platform(config)


def check_platform(config):
  """An attention implementation these devices cannot run is a ConfigError; one
  they run only emulated gets a warning line on stderr (once, from process 0)."""
  import jax
  implementation = config.model.get("attention", {}).get("implementation", "naive")
  platform = jax.default_backend()
  if implementation == "cudnn" and platform != "gpu":
    raise ConfigError(f"attention.implementation='cudnn' needs an NVIDIA GPU (cuDNN), and "
                      f"this run's devices are {platform}: use 'xla' or 'naive'")
  if implementation == "fused" and platform == "cpu" and jax.process_index() == 0:
    print("warning: attention.implementation='fused' on CPU runs its Pallas kernel in "
          "interpret mode, many times slower than 'naive' (the kernel is for GPU and TPU)",
          file=sys.stderr, flush=True)


def flat_fields(config):
  """{'model.attention.kind': 'hopfield', ...}: leaves as JSON would store them."""
  tree = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config
  tree = json.loads(json.dumps(tree, default=str))   # tuples → lists, as in config.json
  flat = {}

  def walk(node, prefix):
    if isinstance(node, dict) and node:
      for key, value in node.items():
        walk(value, f"{prefix}{key}.")
    else:
      flat[prefix[:-1]] = node

  walk(tree, "")
  return flat


def changed_fields(saved, current):
  """Dotted names whose values differ between two configs, except RESUMABLE_FIELDS
  and fields the saved config lacks (added to base_config after it was written)."""
  old, new = flat_fields(saved), flat_fields(current)

  def resumable(name):
    return any(name == f or name.startswith(f + ".") for f in RESUMABLE_FIELDS)

  return sorted(name for name in old
                if not resumable(name) and old[name] != new.get(name, "<absent>"))


def check_same_run(saved, current, workdir):
  """A workdir belongs to the config that made it: refuse to resume with another."""
  changed = changed_fields(saved, current)
  if not changed or current.get("force_resume"):
    return changed
  old, new = flat_fields(saved), flat_fields(current)
  listed = ", ".join(f"{name} ({old.get(name, '<absent>')!r} → {new.get(name, '<absent>')!r})"
                     for name in changed)
  raise ConfigError(
      f"{workdir} was made by another config; changed: {listed}; a resumed run may "
      f"change only {', '.join(RESUMABLE_FIELDS)}: use a new --workdir or "
      f"--config.force_resume=True")
