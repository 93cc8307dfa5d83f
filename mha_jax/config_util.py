"""Helpers for `configs/*.py`: `:key=value` arguments, the loop's default fields,
loading a config file by path (tests, notebooks) as `--config` does, and the
command line's `--config.model.FIELD=VALUE` for every model option."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import os

import ml_collections

from mha_jax.models import stack_config

# The residual form every config starts from: the model's own default (scaled branch,
# x ← x + (1−α)u, which reproduced the paper's α ablation where convex did not — README).
DEFAULT_RESIDUAL = stack_config.AttentionConfig.residual

def _convert(key, text, default):
  if default is None:   # an optional number, unset by default
    return _number(key, text, float)
  if isinstance(default, bool):
    if text.lower() not in ("true", "false", "1", "0", "yes", "no", ""):
      raise ValueError(f"config arg {key}={text!r} is not a boolean")
    return text.lower() in ("true", "1", "yes", "")
  if isinstance(default, int):
    return _number(key, text, int)
  if isinstance(default, float):
    return _number(key, text, float)
  return text


def _number(key, text, kind):
  try:
    return kind(text)
  except ValueError:
    what = "an integer" if kind is int else "a number"
    raise ValueError(f"config arg {key}={text!r} is not {what}") from None


def parse_arg(arg, **defaults):
  """'size=S,attention=hopfield,smoke' → ConfigDict typed by the defaults (a None
  default takes a number); a bare key means True. Unknown keys fail with the list
  of allowed ones."""
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, text = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"unknown config arg {key!r}; allowed: {sorted(defaults)}")
    values[key] = _convert(key, text.strip(), defaults[key])
  return ml_collections.ConfigDict(values)


def load_config(spec):
  """'configs/demo.py:attention=hopfield' → that file's get_config(arg)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location(
      os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def data_config(name, **overrides):
  """The data issue's defaults for `name`, with overrides (e.g. seq_len)."""
  from mha_jax import data  # configs stay importable while data is optional
  return data.default_data_config(name, **overrides)


def base_config():
  """Every loop field with its default; configs override what they need."""
  return ml_collections.ConfigDict(dict(
      seed=0,                  # init, dropout and data order all derive from it
      total_steps=1000,        # optimizer steps (one global batch each)
      batch_size=128,          # global, split over data*fsdp and the micro-batches
      eval_batch_size=128,
      grad_accum_steps=1,      # micro-batches per step (scanned in the step)
      label_smoothing=0.0,     # images only
      log_every=50,            # steps between train-metric rows (and NaN checks)
      eval_every=500,          # 0: no evaluation; the last step always evaluates
      eval_steps=-1,           # eval batches per evaluation; -1: the whole split
      checkpoint_every=1000,   # 0: only at the end (and on SIGTERM/SIGINT)
      keep_checkpoints=3,
      async_checkpoints=True,
      progress_bar=True,
      max_skipped_steps=0,     # non-finite steps skipped (update dropped) before stopping
      force_resume=False,      # resume although the model/data/optimizer config changed
      init_from="",            # orbax workdir or Hugging Face dir: params for a warm start
      init_from_exclude="",    # regex of params not taken from a Hugging Face init_from
      distributed=False,       # ask JAX to detect a cluster (TPU pod, SLURM: automatic anyway)
      distributed_timeout_s=300,   # how long processes wait for all peers to join
      compilation_cache_dir="",    # JAX's persistent compilation cache ("" = off)
      profile_start_step=0,    # > 0: jax.profiler trace of steps N.. into <workdir>/tb
      profile_num_steps=3,
      mesh=dict(data=-1, fsdp=1, tensor=1),   # -1: the remaining devices
      sharding_rules=(),       # () = mha_jax.train.sharding.DEFAULT_RULES
      optim=dict(
          learning_rate=1e-3,
          warmup_steps=100,
          schedule="cosine",   # cosine | constant (after linear warmup)
          end_lr_ratio=0.0,    # cosine floor as a fraction of learning_rate
          grad_clip=1.0,       # global norm; 0 = off
          b1=0.9, b2=0.999, eps=1e-8,
          weight_decay=0.05,   # decoupled (AdamW)
          decay_params=("kernel",),  # leaf names that get weight decay
          trainable="",        # regex on param paths; "" = all (e.g. "^head/" = linear probe)
      ),
  ))


def attention_config(kind, alpha=None, alpha_hidden=None, residual=None, **extra):
  """config.model.attention with every field of the model's AttentionConfig, so
  `--config.model.attention.h0=...` works; None keeps a field's default, and
  alpha_hidden None ties α′ = α as the paper does. Checked here, so a bad
  `:argument` (or a setting the kind does not read) fails as the override would."""
  fields = dict(dataclasses.asdict(stack_config.AttentionConfig()), kind=kind, **extra)
  if alpha is not None:
    fields.update(alpha=alpha, alpha_hidden=alpha)
  if alpha_hidden is not None:
    fields["alpha_hidden"] = alpha_hidden
  if residual is not None:
    fields["residual"] = residual
  stack_config.AttentionConfig(**fields)
  return fields


def shrink_to_smoke(config):
  """Seconds on CPU, real (offline) data so the loss visibly falls: a 2-layer
  model, 20 steps, evaluation and checkpoints every 10. Images → sklearn digits
  (8×8), text → Shakespeare characters (64 per sequence)."""
  model = config.model
  model.update(num_layers=2, width=32, num_heads=4, mlp_dim=64, dropout=0.0, dtype="float32")
  if model.name == "vit":
    config.data = data_config("digits")
    model.variant = "Ti/2"
    config.label_smoothing = 0.0
    learning_rate = 1e-2   # the zero-initialised head needs a push to move in 20 steps
  else:
    config.data = data_config("shakespeare_char", seq_len=64)
    model.max_len = 64
    learning_rate = 3e-3
  config.update(total_steps=20, batch_size=32, eval_batch_size=32, log_every=5,
                eval_every=10, eval_steps=2, checkpoint_every=10, init_from="")
  config.optim.update(learning_rate=learning_rate, warmup_steps=2, trainable="")
  return config


# --- The command line's `--config.model.FIELD=VALUE` (mha_jax.main and mha_jax.aot) ---

def model_option_defaults():
  """{option: default} of every option `config.model` may set (StackConfig's fields
  but `attention`, and each model family's own); a default of None takes a number,
  a required field an integer."""
  from mha_jax import models
  defaults = {}
  for field in dataclasses.fields(stack_config.StackConfig):
    if field.name != "attention":
      defaults[field.name] = 0 if field.default is dataclasses.MISSING else field.default
  for family in models.FAMILIES.values():
    for field in dataclasses.fields(family.model_class):
      if field.name not in ("stack", "parent", "name"):
        defaults[field.name] = field.default
  return defaults


def _model_override(arg):
  """'--config.model.remat_policy=full' → ('remat_policy', 'full'), else None."""
  if not arg.startswith("--config.model.") or "=" not in arg:
    return None
  name, _, text = arg[len("--config.model."):].partition("=")
  return None if "." in name else (name, text)


def split_model_overrides(argv):
  """(argv without them, {name: typed value}) for the `--config.model.NAME=VALUE`
  options that set a model option the config file leaves out, which ml_collections
  would refuse (it only overrides existing fields): every model option is settable
  from the command line. A config that fails to load leaves argv as it is (the
  flag parser then reports it)."""
  defaults = model_option_defaults()
  candidates = [a for a in argv if (_model_override(a) or ("",))[0] in defaults]
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
  if not candidates or spec is None:
    return list(argv), {}
  try:
    present = load_config(spec).get("model") or {}
  except Exception:  # noqa: BLE001 — reported by the flag parser, in its words
    return list(argv), {}
  absent = [a for a in candidates if _model_override(a)[0] not in present]
  values = {}
  for arg in absent:
    name, text = _model_override(arg)
    values[name] = _convert(f"--config.model.{name}", text, defaults[name])
  return [a for a in argv if a not in absent], values


def add_model_options(config, values):
  """The options `split_model_overrides` took out, set on the parsed config."""
  with config.unlocked():
    for name, value in values.items():
      config.model[name] = value
  return config


def unknown_field_message(argv):
  """'--config.optim.lr=1: the config has no field optim.lr (did you mean
  optim.learning_rate?); ...' for the first override naming no field, or None."""
  spec = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
  config = load_config(spec)
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    node, parts = config, arg[len("--config."):].split("=", 1)[0].split(".")
    for depth, part in enumerate(parts):
      if not hasattr(node, "keys") or part not in node:
        siblings = list(node.keys()) if hasattr(node, "keys") else []
        if parts[:depth] == ["model"]:
          siblings = sorted(set(siblings) | set(model_option_defaults()))
        close = difflib.get_close_matches(part, siblings, n=1)
        hint = f" (did you mean {'.'.join(parts[:depth] + close)}?)" if close else ""
        allowed = (f"allowed: {', '.join(sorted(siblings))}" if parts[:depth] == ["model"]
                   else f"list the fields with --help --config={spec}")
        return f"{arg}: the config has no field {'.'.join(parts[:depth + 1])}{hint}; {allowed}"
      node = node[part]
  return None
