"""Compile the real train step of a config for a device set and measure it.

The model, optimizer state, shardings and step are the ones `train_and_evaluate`
builds (same functions); only the arrays are abstract (ShapeDtypeStructs), so
nothing is allocated and nothing runs. XLA's `memory_analysis` gives argument,
output, temp and aliased bytes per device; `cost_analysis` the FLOPs.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

import jax
import numpy as np

from mha_jax import data as data_lib
from mha_jax import flops as flops_lib
from mha_jax import kernels
from mha_jax.aot import topology as topology_lib
from mha_jax.models import layers
from mha_jax.train import optim, sharding, state, tasks, train

_GPT2_VOCAB = 50257   # every TFDS text set of the table is GPT-2 BPE
QUICK_CAP_FLAG = "--xla_tpu_max_hbm_size_mib=1"


@dataclasses.dataclass
class Fit:
  """Per-device figures of one compiled train step."""
  label: str
  devices: str                 # "v5e:4x4 (16 TPU devices)" or "8 simulated CPU devices"
  num_devices: int
  global_batch: int
  per_device_batch: int        # rows per data×fsdp shard
  mesh: str
  remat_policy: str
  fits: bool | None            # None: the CPU estimate has no memory limit of its own
  params_bytes: int
  opt_bytes: int
  temp_bytes: int | None
  total_bytes: int | None      # arguments + outputs − aliased + temp
  carry_bytes: int             # the attention state scan saves between layers, all layers
  model_flops: float           # per step, global (MaxText count)
  mha_extra_flops: float
  xla_flops_per_device: float | None
  items_per_step: int
  item_name: str
  error: str = ""
  attention_choice: str = ""   # what implementation "auto" chose at this shape, and why


def target_devices(topology=None, cpu_devices=None, quick=False):
  """(devices, label, Chip or None) for a TPU topology ("v5e:4x4", compiled by
  libtpu) or N simulated CPU devices; ValueError if libtpu cannot provide it.

  quick: cap XLA:TPU's HBM at 1 MiB, so every compile stops at its memory check
  (in about a minute instead of ten) and reports the bytes the step needs; the
  verdict is then needs ≤ HBM (`Fit.fits` stays None). Must be chosen before
  libtpu starts in this process."""
  if cpu_devices is not None:
    jax.config.update("jax_num_cpu_devices", cpu_devices)   # before the CPU backend starts
    devices = jax.devices("cpu")[:cpu_devices]
    return devices, f"{len(devices)} simulated CPU devices (estimate)", None
  chip, dims = topology_lib.parse(topology)
  # Nothing runs on a TPU here: several compiling processes may share libtpu.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  if quick:
    os.environ["LIBTPU_INIT_ARGS"] = (os.environ.get("LIBTPU_INIT_ARGS", "")
                                      + " " + QUICK_CAP_FLAG).strip()
  try:
    from jax.experimental import topologies
    desc = topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                        chip_config_name="megacore" if chip.cores_in_name
                                        else "default",
                                        chips_per_host_bounds=topology_lib.host_bounds(dims),
                                        num_slices=1)
  except Exception as e:  # noqa: BLE001 — no libtpu, or a topology it does not know
    raise ValueError(f"--topology={topology}: {str(e).strip().splitlines()[0]}"
                     f"{topology_lib.libtpu_hint()}") from e
  return desc.devices, f"{topology} ({len(desc.devices)} TPU {chip.name} devices)", chip


def dataset_info(config):
  """DatasetInfo from the dataset table alone for TFDS sets (no files needed: class
  counts from the TFDS builder's own metadata); offline and synthetic sets are
  built (they are small and local)."""
  cfg = config.data
  row = data_lib.datasets.lookup(cfg.name)
  if row.source != "tfds":
    return train.make_input(config, train=True).info
  if row.modality == "image":
    num_classes = config.model.get("num_classes")
    if num_classes is None:
      tfds = data_lib.sources.import_tfds()
      num_classes = tfds.builder(cfg.name).info.features["label"].num_classes
    return data_lib.DatasetInfo(cfg.name, "image", 0, num_classes=num_classes,
                                image_shape=(cfg.image_size, cfg.image_size, 3))
  return data_lib.DatasetInfo(cfg.name, "text", 0, vocab_size=_GPT2_VOCAB, seq_len=cfg.seq_len)


def batch_spec(config, info, global_batch, data_sharding):
  """ShapeDtypeStructs of one global training batch, as the input pipeline makes it."""
  def spec(shape, dtype):
    return jax.ShapeDtypeStruct((global_batch,) + tuple(shape), dtype, sharding=data_sharding)
  if info.modality == "image":
    batch = {"image": spec(info.image_shape, np.float32), "label": spec((), np.int32),
             "mask": spec((), np.float32)}
    if config.data.get("mixup_alpha", 0) or config.data.get("cutmix_alpha", 0):
      batch["soft_label"] = spec((info.num_classes,), np.float32)
    return batch
  return {"inputs": spec((info.seq_len,), np.int32), "targets": spec((info.seq_len,), np.int32),
          "mask": spec((info.seq_len,), np.float32)}


def _shard_bytes(abstract, shardings):
  leaves = zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings))
  return int(sum(math.prod(s.shard_shape(x.shape)) * x.dtype.itemsize for x, s in leaves))


def sequence_length(model, info):
  if info.modality == "image":
    return (model.image_size // model.patch_size) ** 2 + (model.pool == "token")
  return info.seq_len


def carry_bytes(model, info, per_device_batch):
  """The attention state one layer hands the next (measured by `layers.carry_bytes`
  with jax.eval_shape of the real initial state), once per layer: what the scan keeps
  for backward; the layer-wise q, k buffers [L, …] once (every layer fills its own
  slot). 0 for kinds that carry nothing."""
  stack, length = model.stack, sequence_length(model, info)
  once = kernels.resolve(stack.attention, stack.num_layers, per_device_batch, length,
                         stack.num_heads, stack.head_dim) == "layerwise"
  return (1 if once else stack.num_layers) * layers.carry_bytes(stack, per_device_batch, length)


def attention_choice(model, info, global_batch, mesh):
  """The line "attention: auto → CHOICE (why)", by `kernels.choose` at the compiled
  shape and mesh, for MHA with implementation "auto"; "" otherwise."""
  stack = model.stack
  att = stack.attention
  if att.kind != "hopfield" or att.implementation != "auto":
    return ""
  with jax.set_mesh(mesh):
    choice, why = kernels.choose(att, stack.num_layers, global_batch,
                                 sequence_length(model, info), stack.num_heads, stack.head_dim)
  return f"attention: auto → {choice} ({why})"


def with_chip_budget(config, hbm_bytes):
  """MHA `auto` judges the saved H against a quarter of the target chip's HBM (the
  host compiling it reports no device memory); an explicit budget is kept."""
  att = config.model.get("attention", {})
  if hbm_bytes is None or att.get("implementation") != "auto" or att.get("hidden_budget_bytes"):
    return config
  config = config.copy_and_resolve_references()
  config.model.attention.hidden_budget_bytes = hbm_bytes // 4
  return config


def compile_step(config, devices, info):
  """(compiled or the compile error, model, abstract state, state shardings, mesh)."""
  task = tasks.make_task(config, info)
  model = train.make_model(config.model, task)
  tx, _ = optim.make_optimizer(config.optim, config.total_steps)
  mesh = sharding.make_mesh(config.mesh, devices)
  sharding.check_batch(config.batch_size, mesh, config.grad_accum_steps)
  rules = sharding.logical_rules(config)
  abstract, state_sh = state.abstract_state(model, tx, task, config.seed, mesh, rules)
  train_fn, _ = train.make_steps(config, model, tx, task, state_sh, mesh)
  state_spec = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract, state_sh)
  batch = batch_spec(config, info, config.batch_size, sharding.batch_sharding(mesh))
  with sharding.step_context(mesh, rules):
    lowered = train_fn.lower(state_spec, batch)
  try:
    compiled = lowered.compile()
  except Exception as e:  # XLA:TPU refuses a program that exceeds HBM at compile time
    compiled = e
  return compiled, model, abstract, state_sh, mesh


def _cost_flops(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0))


def xla_flops(config, devices, info):
  """cost_analysis FLOPs per device for all layers: XLA counts a scanned layer
  once, so compile unscanned 1- and 2-layer copies and extrapolate linearly."""
  counts = []
  for depth in (1, 2):
    small = config.copy_and_resolve_references()
    small.unlock()
    small.model.update(num_layers=depth, scan_layers=False)
    compiled = compile_step(small, devices, info)[0]
    if isinstance(compiled, Exception):
      return None
    counts.append(_cost_flops(compiled))
  num_layers = train.make_model(config.model, tasks.make_task(config, info)).stack.num_layers
  return counts[0] + (num_layers - 1) * (counts[1] - counts[0])


def _oom_temp_bytes(message):
  """HLO temporaries XLA:TPU says the program needs, from its out-of-memory error."""
  match = re.search(r"required for HLO temporaries \(([\d.]+)([KMGT])\)", message)
  if not match:
    return None
  return int(float(match[1]) * {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}[match[2]])


def measure(config, devices, device_label, hbm_bytes=None, with_xla_flops=True) -> Fit:
  """Compile `config`'s train step on `devices`; figures per device."""
  config = with_chip_budget(config, hbm_bytes)
  info = dataset_info(config)
  compiled, model, abstract, state_sh, mesh = compile_step(config, devices, info)
  step_flops = flops_lib.training_flops(model, config.batch_size, info.modality,
                                        seq_len=info.seq_len,
                                        channels=(info.image_shape or (0, 0, 3))[2])
  per_device_batch = config.batch_size // math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
  fit = Fit(
      label="", devices=device_label, num_devices=len(devices), global_batch=config.batch_size,
      per_device_batch=per_device_batch,
      mesh=" ".join(f"{k}={v}" for k, v in mesh.shape.items()),
      remat_policy=model.stack.remat_policy, fits=None,
      params_bytes=_shard_bytes(abstract["params"], state_sh["params"]),
      opt_bytes=_shard_bytes(abstract["opt"], state_sh["opt"]), temp_bytes=None,
      total_bytes=None, carry_bytes=carry_bytes(model, info, per_device_batch),
      model_flops=step_flops.model, mha_extra_flops=step_flops.mha_extra,
      xla_flops_per_device=None, items_per_step=step_flops.items,
      item_name=step_flops.item_name,
      attention_choice=attention_choice(model, info, config.batch_size, mesh))
  if isinstance(compiled, Exception):
    fit.error = str(compiled).strip().splitlines()[0][:300]
    fit.temp_bytes = _oom_temp_bytes(str(compiled))
    if fit.temp_bytes is not None:   # what it needs: temporaries + the state
      fit.total_bytes = fit.temp_bytes + fit.params_bytes + fit.opt_bytes
    quick = QUICK_CAP_FLAG in os.environ.get("LIBTPU_INIT_ARGS", "")
    if quick and fit.total_bytes is not None and hbm_bytes is not None:
      fit.fits, fit.error = fit.total_bytes <= hbm_bytes, "quick: needs vs HBM (not compiled)"
    else:
      fit.fits = False
    return fit
  memory = compiled.memory_analysis()
  fit.temp_bytes = int(memory.temp_size_in_bytes)
  fit.total_bytes = int(memory.argument_size_in_bytes + memory.output_size_in_bytes
                        - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  if hbm_bytes is not None:
    fit.fits = fit.total_bytes <= hbm_bytes
  if with_xla_flops:
    fit.xla_flops_per_device = xla_flops(config, devices, info)
  return fit
