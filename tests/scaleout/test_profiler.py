"""The train loop's instruments: a profiler trace window, MFU per device."""

import pathlib
import types

import jax
import jax.numpy as jnp
import pytest

from mha_jax import chips, flops
from mha_jax.train import profiler


def test_trace_covers_the_window_and_lands_in_tensorboard_dir(tmp_path):
  trace = profiler.StepProfiler(str(tmp_path), start=2, num_steps=2)
  step_fn = jax.jit(lambda x: jnp.tanh(x @ x))
  x = jnp.ones((64, 64))
  started = []
  for step in range(1, 6):
    trace.before_step(step)
    started.append(trace.active)
    x = step_fn(x)
    trace.after_step(step, x)
  trace.close()
  assert started == [False, True, True, False, False]
  assert list(pathlib.Path(tmp_path, "tb", "plugins", "profile").glob("*/*.xplane.pb"))


def test_utilization_row_uses_the_chip_peak():
  step = flops.StepFlops(model=4e15, mha_extra=1e12, items=8192, item_name="tokens")
  tpus = [types.SimpleNamespace(device_kind="TPU v5 lite", platform="tpu")] * 16
  row = profiler.Utilization(step, tpus).row(steps_per_sec=0.5)
  assert row["model_tflops_per_device"] == pytest.approx(4e15 * 0.5 / 16 / 1e12)
  assert row["mfu"] == pytest.approx(4e15 * 0.5 / 16 / chips.CHIPS["v5e"].peak_flops)
  assert row["tokens_per_sec_per_device"] == pytest.approx(8192 * 0.5 / 16)
  assert row["mha_extra_tflops_per_device"] == pytest.approx(1e12 * 0.5 / 16 / 1e12)
  assert "mfu" not in profiler.Utilization(step, jax.devices()).row(1.0)   # CPU: no peak


def test_tpu_slice_shapes():
  assert (chips.tpu_slice("v4-32").num_chips, chips.tpu_slice("v4-32").num_hosts) == (16, 4)
  assert chips.tpu_slice("v5e-16").accelerator_type == "v5litepod-16"
  assert chips.tpu_slice("v5p-8").num_hosts == 1
  with pytest.raises(ValueError, match="v5litepod-16"):
    chips.tpu_slice("v7-8")
