"""python -m mha_jax.aot --config=configs/<x>.py:<args> (--topology=v5e:4x4 | --cpu_devices=8)

Compiles the config's real train step ahead of time, with nothing allocated and
nothing run, and prints per device: parameter and optimizer bytes, XLA temp
bytes, the total against the chip's HBM, MHA's saved hidden state, FLOPs per
step (model count and XLA's cost_analysis) and the step time a given MFU
implies. `--topology` compiles with XLA:TPU (needs `pip install 'mha-jax[tpu]'`);
`--cpu_devices` compiles for simulated CPU devices, an estimate (XLA:CPU's
buffer assignment) compared with every chip of mha_jax.chips.

  python -m mha_jax.aot --config=configs/gpt2_wikitext103.py:size=xl,attention=hopfield \\
      --config.mesh.data=1 --config.mesh.fsdp=-1 --topology=v5e:4x4 --remat=auto
  python -m mha_jax.aot --config=configs/vit_imagenet.py --cpu_devices=8 --sweep

`--remat=auto` tries none, dots, full and reports the first that fits.
`--sweep` finds, for each remat policy, the largest global batch that fits.
`--config.model.OPTION=VALUE` sets any model option, as in mha_jax.main. A bad
flag or config is one `error:` line and exit 1; `--debug` shows the traceback.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mha_jax import config_util

flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:4x4, v4:2x2x4, v5p:2x2x1.")
flags.DEFINE_integer("cpu_devices", None, "Compile for this many simulated CPU devices.")
flags.DEFINE_string("chip", "H100", "Chip the CPU estimate's step time uses.")
flags.DEFINE_float("mfu", 0.4, "Model FLOPs utilisation for the implied step time.")
flags.DEFINE_string("remat", None, "Remat policy override; 'auto' = first of none,dots,full "
                    "that fits.")
flags.DEFINE_bool("sweep", False, "Largest batch that fits, per remat policy.")
flags.DEFINE_list("remat_policies", ["none", "dots", "full"], "Policies --sweep/auto try.")
flags.DEFINE_list("per_device_batches", ["1", "2", "4", "8", "16", "32", "64", "128"],
                  "Rows per batch shard that --sweep tries, smallest first.")
flags.DEFINE_bool("xla_flops", True, "Also compile 1- and 2-layer unscanned copies for "
                  "cost_analysis FLOPs.")
flags.DEFINE_bool("quick", False, "TPU: stop each compile at XLA's memory check (HBM capped "
                  "at 1 MiB) and judge needs ≤ HBM; about a minute instead of ten.")
flags.DEFINE_string("json", None, "Write the figures to this JSON file.")
flags.DEFINE_bool("debug", False, "Show tracebacks instead of one-line errors.")


def _fail(message):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(1)


def parse_flags(argv):
  """absl's parse, with `--config.model.OPTION` for every model option and one
  `error:` line (exit 1) for a bad flag or config field; returns the rest of argv."""
  from mha_jax.main import last_line
  try:
    argv, model_options = config_util.split_model_overrides(argv)
    # Defined here, on the argv without the options ml_collections cannot add (it
    # registers `--config.*` overrides from the argv it is given).
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/demo.py:smoke.",
                                    lock_config=False, sys_argv=argv)
    rest = flags.FLAGS(argv)
    if flags.FLAGS.config is None:
      raise ValueError("--config is required, e.g. --config=configs/demo.py:smoke")
    config_util.add_model_options(flags.FLAGS.config, model_options)
    check_flags(flags.FLAGS)
  except (KeyError, AttributeError) as e:   # an override names no field of the config
    if "--debug" in argv:
      raise
    _fail(config_util.unknown_field_message(argv) or last_line(e))
  except (flags.Error, OSError, ValueError, TypeError) as e:
    if "--debug" in argv:
      raise
    _fail(last_line(e).replace("Error whilst parsing config file:", "").strip())
  return rest


def check_flags(values):
  """One ValueError naming a bad flag value and what is allowed."""
  from mha_jax import chips
  from mha_jax.models import stack_config
  policies = sorted(stack_config.REMAT_POLICIES)
  if (values.topology is None) == (values.cpu_devices is None):
    raise ValueError("give exactly one of --topology (e.g. v5e:2x2) and --cpu_devices (e.g. 8)")
  if values.cpu_devices is not None and values.cpu_devices < 1:
    raise ValueError(f"--cpu_devices={values.cpu_devices}: give a number of devices >= 1")
  if values.topology is not None:
    from mha_jax.aot import topology
    topology.parse(values.topology)
  if values.remat is not None and values.remat not in ["auto", *policies]:
    raise ValueError(f"--remat={values.remat!r}: allowed: auto, {', '.join(policies)}")
  for policy in values.remat_policies or [""]:
    if policy not in policies:
      raise ValueError(f"--remat_policies={','.join(values.remat_policies)}: {policy!r} is "
                       f"not a remat policy; allowed: {', '.join(policies)}")
  if not all(b.isdigit() and int(b) > 0 for b in values.per_device_batches):
    raise ValueError(f"--per_device_batches={','.join(values.per_device_batches)}: give "
                     "positive integers")
  chips.chip(values.chip)
  if not 0 < values.mfu <= 1:
    raise ValueError(f"--mfu={values.mfu}: a fraction in (0, 1]")
  check_attention_backend(values.config)


def check_attention_backend(config):
  """cuDNN attention compiles only for an NVIDIA GPU, which AOT here never targets."""
  implementation = config.model.get("attention", {}).get("implementation", "naive")
  if implementation == "cudnn":
    raise ValueError("attention.implementation='cudnn' needs an NVIDIA GPU, and AOT "
                     "compiles for TPU or CPU devices: use 'xla' (or 'naive')")


def _with(config, **model_or_batch):
  config = config.copy_and_resolve_references()
  config.unlock()
  if "remat_policy" in model_or_batch:
    config.model.remat_policy = model_or_batch["remat_policy"]
  if "batch_size" in model_or_batch:
    config.batch_size = model_or_batch["batch_size"]
  return config


def _measure(config, devices, label, chip, xla_flops):
  from mha_jax.aot import fit as fit_lib
  from mha_jax import chips
  hbm = (chip or chips.chip(flags.FLAGS.chip)).hbm_bytes
  result = fit_lib.measure(config, devices, label, hbm_bytes=hbm, with_xla_flops=xla_flops)
  result.label = _config_label()
  return result


def _config_label():
  return next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--config=")), "config")


def _sweep(config, devices, label, chip):
  from mha_jax.train import sharding
  mesh_size = sharding.mesh_shape(config.mesh, len(devices))
  shards = mesh_size[0] * mesh_size[1]
  rows, fits = [], []
  for policy in flags.FLAGS.remat_policies:
    best, failed = None, None
    for rows_per_shard in map(int, flags.FLAGS.per_device_batches):
      candidate = _with(config, remat_policy=policy, batch_size=rows_per_shard * shards)
      result = _measure(candidate, devices, label, chip, xla_flops=False)
      fits.append(result)
      if not result.fits:
        failed = candidate.batch_size
        break
      best = result
    rows.append((policy, best, failed))
  return rows, fits


def main(argv):
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)
  from mha_jax import chips
  from mha_jax.aot import report
  from mha_jax.train.sharding import ConfigError
  config, mfu = flags.FLAGS.config, flags.FLAGS.mfu
  from mha_jax.aot import fit
  try:
    devices, label, chip = fit.target_devices(flags.FLAGS.topology, flags.FLAGS.cpu_devices,
                                              quick=flags.FLAGS.quick)
  except ValueError as e:
    _fail(e)
  time_chip = chip or chips.chip(flags.FLAGS.chip)
  try:
    if flags.FLAGS.sweep:
      rows, results = _sweep(config, devices, label, chip)
      print(f"{_config_label()} on {label}: sweep")
      print(report.format_sweep(rows))
    else:
      policies = (flags.FLAGS.remat_policies if flags.FLAGS.remat == "auto"
                  else [flags.FLAGS.remat or config.model.get("remat_policy", "none")])
      results = []
      for policy in policies:
        results.append(_measure(_with(config, remat_policy=policy), devices, label, chip,
                                flags.FLAGS.xla_flops))
        if results[-1].fits:
          break
      for result in results:
        print(report.format_fit(result, chip, time_chip, mfu))
  except (ConfigError, ValueError) as e:
    if flags.FLAGS.debug:
      raise
    _fail(str(e).strip().splitlines()[0])
  if flags.FLAGS.json:
    with open(flags.FLAGS.json, "w", encoding="utf-8") as f:
      json.dump([report.as_json(r, mfu, time_chip) for r in results], f, indent=2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
