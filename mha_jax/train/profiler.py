"""Performance instruments of the train loop: a `jax.profiler` trace of a window of
steps, MFU and throughput per device, and JAX's persistent compilation cache.

- `config.profile_start_step=N, profile_num_steps=K` traces steps N..N+K-1 on
  process 0 into <workdir>/tb/plugins/profile/ (TensorBoard's profile tab, XProf).
- `config.compilation_cache_dir=DIR` keeps compiled programs across runs.
"""

from __future__ import annotations

import os

import jax

from mha_jax import chips


def enable_compilation_cache(directory):
  """JAX's persistent compilation cache in `directory` (no-op for "")."""
  if directory:
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


class StepProfiler:
  """Starts a trace before step `start` and stops it after `num_steps` steps."""

  def __init__(self, workdir, start, num_steps):
    self.log_dir = os.path.join(workdir, "tb")
    self.start, self.stop_after = int(start), int(start) + int(num_steps) - 1
    self.enabled = self.start > 0 and num_steps > 0 and jax.process_index() == 0
    self.active = False

  def before_step(self, step):
    """`step`: the 1-based number of the step about to run."""
    if self.enabled and step == self.start:
      jax.profiler.start_trace(self.log_dir)
      self.active = True

  def after_step(self, step, outputs):
    if self.active and step >= self.stop_after:
      jax.block_until_ready(outputs)   # the trace holds the whole of the last step
      jax.profiler.stop_trace()
      self.active = False

  def close(self):
    if self.active:
      jax.profiler.stop_trace()
      self.active = False


class Utilization:
  """Model TFLOP/s and MFU per device from steps/s (StepFlops from mha_jax.flops)."""

  def __init__(self, step_flops, devices=None):
    devices = jax.devices() if devices is None else devices
    self.step_flops, self.num_devices = step_flops, len(devices)
    self.chip = chips.chip_for_device(devices[0])

  def row(self, steps_per_sec):
    flops = self.step_flops
    per_device = flops.model * steps_per_sec / self.num_devices
    row = {"model_tflops_per_device": per_device / 1e12,
           f"{flops.item_name}_per_sec_per_device":
               flops.items * steps_per_sec / self.num_devices}
    if flops.mha_extra:
      row["mha_extra_tflops_per_device"] = flops.mha_extra * steps_per_sec / self.num_devices / 1e12
    if self.chip is not None:
      row["mfu"] = per_device / self.chip.peak_flops
    return row
