"""`python -m mha_jax.aot`: the real train step compiled ahead of time."""

import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from mha_jax.aot import fit as fit_lib
from mha_jax.aot import report
from mha_jax import chips
from mha_jax.train import config_util, optim

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMOKE = f"{ROOT}/configs/gpt2_wikitext103.py:smoke,attention=hopfield"


def test_cpu_fit_bytes_equal_parameter_count_times_dtype_times_adam():
  config = config_util.load_config(SMOKE)
  config.mesh = dict(data=8, fsdp=1, tensor=1)   # replicated state: whole trees per device
  result = fit_lib.measure(config, jax.devices()[:8], "8 simulated CPU devices",
                           with_xla_flops=False)
  info = fit_lib.dataset_info(config)
  model = fit_lib.train.make_model(config.model, fit_lib.tasks.make_task(config, info))
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          np.zeros((1, config.data.seq_len), np.int32))["params"]
  count = sum(x.size for x in jax.tree.leaves(nn.unbox(shapes)))
  assert result.params_bytes == count * 4                      # float32
  # AdamW: two float32 moments per parameter, plus int32 step counters (Adam's, the schedule's).
  tx, _ = optim.make_optimizer(config.optim, config.total_steps)
  counters = [x for x in jax.tree.leaves(jax.eval_shape(tx.init, nn.unbox(shapes))) if x.ndim == 0]
  assert result.opt_bytes == 2 * count * 4 + 4 * len(counters) and len(counters) <= 3
  assert result.total_bytes > result.params_bytes + result.opt_bytes and result.temp_bytes > 0
  length = config.data.seq_len
  assert result.carry_bytes == 2 * (32 // 8) * 4 * length * length * 4   # L·B·N·T²·4
  table = report.format_fit(result, None, chips.chip("H100"), 0.4)
  print(table)
  for row in ("parameters", "optimizer state", "temp", "total", "attention carry",
              "FLOPs/step (model)", "step time at 40% MFU", "v5e yes"):
    assert row in table


@pytest.mark.slow
def test_tpu_v5e_2x2_compiles_with_libtpu(tmp_path):
  pytest.importorskip("libtpu", reason="TPU compilation needs the [tpu] extra")
  out = tmp_path / "fit.json"
  env = dict(os.environ, PYTHONPATH=str(ROOT), TPU_ACCELERATOR_TYPE="v5litepod-4")
  run = subprocess.run(
      [sys.executable, "-m", "mha_jax.aot", f"--config={SMOKE}", "--topology=v5e:2x2",
       f"--json={out}"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  assert "v5e:2x2 (4 TPU v5e devices)" in run.stdout and "of 16.00 GiB HBM (v5e): fits" in run.stdout
  (row,) = json.loads(out.read_text())
  assert row["fits"] and row["num_devices"] == 4 and row["chip"] == "v5e"
  # XLA:TPU's own FLOP count (1- and 2-layer extrapolation) near the model count.
  assert 0.7 < row["xla_flops_per_device"] * 4 / row["model_flops"] < 1.5
